"""A local Ray cluster on loopback with token authentication, for tests and demos of ``ray job submit``.

    python -m tools.cluster up   [--dir .ray-cluster] [--workers 1] [--cpus 1] [--dashboard-port 8265]
    python -m tools.cluster down [--dir .ray-cluster]

(``make cluster-up`` / ``make cluster-down``.) ``up`` starts a head node and ``--workers`` worker nodes on this
machine, each a ``ray start --block`` process of its own with ``--cpus`` CPUs, bound to 127.0.0.1, and waits until
every node is alive. Everything it needs stays in ``--dir``:

- ``auth_token``: the cluster's token (made once, mode 0600); ``~/.ray/auth_token`` is neither read nor written;
- ``env``: ``source`` it to talk to the cluster: ``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``,
  ``RAY_API_SERVER_ADDRESS`` (the dashboard, for ``ray job ...``) and ``RAY_ADDRESS`` (the GCS, for ``ray status``
  or a job run as a local driver);
- ``cluster.json``: ports, process ids and Ray's temp folder; ``head.log``, ``worker-N.log``: the nodes' output.

Ray's temp folder is a fresh ``/tmp/wspsr-ray-*`` (short: Ray's socket paths must stay under 108 bytes), so this
cluster never becomes the "latest cluster" in ``/tmp/ray`` that a plain ``ray.init()`` elsewhere on the machine
would join. Ports are free ones picked at start (the dashboard's from ``--dashboard-port`` up), so the cluster can
run beside other Ray instances. ``down`` stops only this cluster's processes (never ``ray stop``, which ends every
Ray process on the machine) and removes the temp folder. The nodes run jobs with this Python's environment first on
``PATH``, so ``ray job submit -- python -m jobs.corpus`` runs in the virtualenv that started the cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_DIR = ".ray-cluster"
HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    pass


@dataclass
class Cluster:
    """What ``up`` started; ``cluster.json`` in the cluster folder."""

    dir: str
    temp_dir: str
    gcs_port: int
    dashboard_port: int
    pids: list[int] = field(default_factory=list)  # the ``ray start --block`` processes, head first

    @property
    def gcs_address(self) -> str:
        return f"{HOST}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def token_path(self) -> Path:
        return Path(self.dir) / "auth_token"

    def client_env(self) -> dict[str, str]:
        """The variables a client (``ray job``, ``ray status``, a driver) needs to reach this cluster."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_API_SERVER_ADDRESS": self.dashboard_url,
            "RAY_ADDRESS": self.gcs_address,
        }

    def environ(self) -> dict[str, str]:
        """``os.environ`` plus :meth:`client_env`, without a token given another way."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
        env.update(self.client_env())
        return env


def _free_port(preferred: int | None = None, taken: set[int] = frozenset()) -> int:
    """``preferred`` or the next port above it that nothing listens on; else one the OS picks."""
    candidates = range(preferred, preferred + 100) if preferred else []
    for port in [*candidates, 0]:
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port
    return _free_port(None, taken)


def _ray_binary() -> str:
    ray = Path(sys.executable).parent / "ray"
    return str(ray) if ray.exists() else (shutil.which("ray") or "ray")


def _alive(pid: int) -> bool:
    try:  # a child of ours that exited is a zombie until reaped, and signal 0 still reaches it
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load(folder: str | Path = DEFAULT_DIR) -> Cluster | None:
    path = Path(folder) / "cluster.json"
    if not path.exists():
        return None
    return Cluster(**json.loads(path.read_text(encoding="utf-8")))


def alive_nodes(cluster: Cluster, timeout: float = 30) -> int:
    """How many nodes the cluster reports alive (0 when it does not answer)."""
    try:
        result = subprocess.run(
            [_ray_binary(), "list", "nodes", "--address", cluster.gcs_address, "--format", "json", "--filter", "state=ALIVE"],
            env=cluster.environ(), capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return 0
    if result.returncode != 0:
        return 0
    try:
        return len(json.loads(result.stdout))
    except json.JSONDecodeError:
        return 0


def up(folder: str | Path = DEFAULT_DIR, workers: int = 1, cpus: int = 1, dashboard_port: int = 8265,
       object_store_mb: int = 512, timeout: float = 180) -> Cluster:
    """Start a head node and ``workers`` worker nodes; return when all are alive (or raise, having stopped them)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    running = load(folder)
    if running and running.pids and all(_alive(pid) for pid in running.pids):
        if alive_nodes(running) == len(running.pids):
            return running
        down(folder)
    token = folder / "auth_token"
    if not token.exists():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes

    taken: set[int] = set()
    cluster = Cluster(
        dir=str(folder), temp_dir=tempfile.mkdtemp(prefix="wspsr-ray-"),
        gcs_port=_free_port(6379, taken), dashboard_port=_free_port(dashboard_port, taken),
    )
    env = cluster.environ()
    del env["RAY_ADDRESS"], env["RAY_API_SERVER_ADDRESS"]  # `ray start` takes its addresses from the flags
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # jobs' `python` is ours
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # nothing to drain here: stop at once on SIGTERM
    common = [
        "--block", "--node-ip-address", HOST, "--num-cpus", str(cpus), "--num-gpus", "0",
        "--temp-dir", cluster.temp_dir, "--disable-usage-stats", "--object-store-memory", str(object_store_mb * 2**20),
        "--min-worker-port", "0", "--max-worker-port", "0",
    ]

    def node_ports() -> list[str]:
        return [
            "--node-manager-port", str(_free_port(None, taken)), "--object-manager-port", str(_free_port(None, taken)),
            "--dashboard-agent-listen-port", str(_free_port(None, taken)), "--dashboard-agent-grpc-port", str(_free_port(None, taken)),
            "--metrics-export-port", str(_free_port(None, taken)), "--runtime-env-agent-port", str(_free_port(None, taken)),
        ]

    head = [
        _ray_binary(), "start", "--head", "--port", str(cluster.gcs_port), "--include-dashboard", "true",
        "--dashboard-host", HOST, "--dashboard-port", str(cluster.dashboard_port),
        "--ray-client-server-port", str(_free_port(None, taken)), *common, *node_ports(),
    ]
    commands = [("head", head)] + [
        (f"worker-{i}", [_ray_binary(), "start", "--address", cluster.gcs_address, *common, *node_ports()]) for i in range(1, workers + 1)
    ]
    try:
        for index, (name, command) in enumerate(commands):
            with open(folder / f"{name}.log", "wb") as log:
                proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            cluster.pids.append(proc.pid)
            _save(cluster)
            _wait_for(cluster, index + 1, timeout, name)
    except BaseException:
        down(folder)
        raise
    _write_env(cluster)
    return cluster


def _wait_for(cluster: Cluster, nodes: int, timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [pid for pid in cluster.pids if not _alive(pid)]
        if dead:
            break
        if alive_nodes(cluster) >= nodes:
            return
        time.sleep(1)
    log = Path(cluster.dir) / f"{name}.log"
    tail = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log.exists() else ""
    raise ClusterError(f"the {name} node did not come up (see {log}):\n{tail}")


def _save(cluster: Cluster) -> None:
    path = Path(cluster.dir) / "cluster.json"
    path.write_text(json.dumps(asdict(cluster), indent=2) + "\n", encoding="utf-8")


def _write_env(cluster: Cluster) -> None:
    lines = [f"export {key}={value}" for key, value in cluster.client_env().items()]
    (Path(cluster.dir) / "env").write_text(
        "# source this file to use the local cluster of `make cluster-up`\n" + "\n".join(lines) + "\n", encoding="utf-8"
    )


def _temp_dir_processes(temp_dir: str) -> list[int]:
    """Processes whose command line names the cluster's own temp folder (only this cluster's can)."""
    found: list[int] = []
    needle = temp_dir.encode()
    if not needle.startswith(b"/") or len(needle) < 8:
        return found
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def down(folder: str | Path = DEFAULT_DIR, grace: float = 30) -> bool:
    """Stop the cluster ``up`` started in ``folder`` (workers first); False when there was none."""
    folder = Path(folder).resolve()
    cluster = load(folder)
    if cluster is None:
        return False
    # Only processes that name the cluster's temp folder are signalled: a stale cluster.json's ids may have been reused.
    ours = set(_temp_dir_processes(cluster.temp_dir)) if Path("/proc").is_dir() else set(cluster.pids)
    nodes = [pid for pid in cluster.pids if pid in ours]
    # SIGTERM makes `ray start --block` stop its node's processes (raylet, GCS, dashboard...) before exiting.
    for pid in reversed(nodes):
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in nodes):
        time.sleep(0.2)
    for pid in nodes:
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)  # each node was started in a session (and process group) of its own
    for pid in _temp_dir_processes(cluster.temp_dir):  # anything of this cluster's left over
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in cluster.pids:
        _alive(pid)  # reaps them if they are our children (as in tests)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    for name in ("cluster.json", "env"):
        (folder / name).unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"the cluster's folder (default: {DEFAULT_DIR})")
    parser.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default: 1)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per node (default: 1)")
    parser.add_argument("--dashboard-port", type=int, default=8265, help="the dashboard's port, or the next free one (default: 8265)")
    args = parser.parse_args(argv)
    if args.command == "down":
        stopped = down(args.dir)
        print(f"local Ray cluster in {args.dir} stopped" if stopped else f"no local Ray cluster in {args.dir}")
        return 0
    if args.command == "status":
        cluster = load(args.dir)
        nodes = alive_nodes(cluster) if cluster else 0
        print(f"{nodes} nodes alive" + (f" at {cluster.dashboard_url}" if cluster else f" (no cluster in {args.dir})"))
        return 0 if nodes else 1
    if args.workers < 0 or args.cpus < 1:
        parser.error("--workers must be >= 0 and --cpus >= 1")
    try:
        cluster = up(args.dir, args.workers, args.cpus, args.dashboard_port)
    except ClusterError as exc:
        print(f"wspsr cluster: error: {exc}", file=sys.stderr)
        return 1
    env = Path(cluster.dir) / "env"
    print(f"local Ray cluster up: {len(cluster.pids)} nodes x {args.cpus} CPUs, dashboard {cluster.dashboard_url}, token auth")
    print(f"  source {os.path.relpath(env)}   # RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, RAY_API_SERVER_ADDRESS, RAY_ADDRESS")
    print("  ray job submit --working-dir . -- python -m jobs.corpus --out $PWD/out/cluster-sample")
    print("  make cluster-down   # stops these nodes only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
