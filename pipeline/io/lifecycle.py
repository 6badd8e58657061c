"""One lifecycle for every job's output folder: whose it is, who works in it now, what the job may remove.

A folder belongs to a job when its ``run.json`` says so. A new or empty folder is claimed by writing the lock and
then ``run.json``; a folder that holds anything else without a ``run.json`` (a user's recordings, another tool's
output) is refused before anything in it is written, read for deletion or removed, ``--overwrite`` included; a
folder another wspsr job wrote is refused too. Inside its own folder a job removes only what its own records name
(``pipeline.io.commit``): never a listing of a folder, never a path through a link.

One run at a time: ``FolderLock`` is a file created exclusively (``O_CREAT | O_EXCL``) that names its holder (host,
process id and the process's start time) and is refreshed while the run goes on. A second run on the folder is
refused with the holder's name; a lock whose process is gone (same host) or that has not been refreshed for
``STALE_AFTER_S`` (another host that crashed) is taken over. In object storage a lock object is written and read
back; there is no exclusive create, so two runs started within the same second could both proceed: give concurrent
runs different folders there.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.io.storage import TMP_PREFIX, Store

RUN_FILE = "run.json"
LOCK_FILE = ".wspsr.lock"
REFRESH_S = 30.0
STALE_AFTER_S = 600.0


class OutputError(RuntimeError):
    """The output folder cannot be used as asked (exit status 2): nothing in it was changed."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), so a reused process id is not taken for its
    predecessor; None where /proc does not tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or _process_start(pid) in (None, started)


class FolderLock:
    """The one run allowed in an output folder at a time (see the module's docstring)."""

    def __init__(self, store: Store):
        self.store = store
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid())}
        self._stop: threading.Event | None = None

    def _read(self) -> tuple[dict[str, Any] | None, float | None]:
        try:
            if self.store.local:
                path = Path(self.store.path(LOCK_FILE))
                return json.loads(path.read_text(encoding="utf-8")), path.stat().st_mtime
            info = self.store.fs.get_file_info(self.store.path(LOCK_FILE))
            if info.type.name != "File":
                return None, None
            doc = json.loads(self.store.read_bytes(LOCK_FILE).decode("utf-8"))
            return doc, doc.get("refreshed")
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError):
            return {}, None  # unreadable: a lock being written this instant, or damaged; judged by its age

    def _mine(self, doc: dict[str, Any]) -> bool:
        return all(doc.get(key) == value for key, value in self.holder.items())

    def _stale(self, doc: dict[str, Any], refreshed: float | None) -> bool:
        if doc and doc.get("host") == self.holder["host"] and isinstance(doc.get("pid"), int):
            return not _alive(doc["pid"], doc.get("pid_start"))
        return refreshed is None or time.time() - refreshed > STALE_AFTER_S

    def acquire(self, location: str) -> None:
        for _ in range(3):
            if self._create():
                self._start_refreshing()
                return
            doc, refreshed = self._read()
            if doc is None:
                continue  # released between our attempt and the read
            if self._mine(doc):
                return  # this process holds it already (a job run twice in one process)
            if not self._stale(doc, refreshed):
                who = f"process {doc.get('pid')} on {doc.get('host')}" if doc else "another run"
                raise OutputError(
                    f"{location} is in use by {who} (lock {LOCK_FILE}, started {doc.get('started', '?')}): wait for it to "
                    f"finish, or give this run another --out; a lock left by a crashed run on another machine is taken "
                    f"over once it is {STALE_AFTER_S / 60:g} minutes old (or delete {LOCK_FILE} when you are sure no run uses the folder)"
                )
            self._remove_stale(doc)
        raise OutputError(f"{location}: could not take the folder's lock {LOCK_FILE}; retry")

    def _document(self) -> bytes:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return json.dumps(dict(self.holder, started=stamp, refreshed=time.time())).encode("utf-8")

    def _create(self) -> bool:
        if not self.store.local:
            if self.store.exists(LOCK_FILE):
                return False
            self.store.write_bytes(LOCK_FILE, self._document())
            doc, _ = self._read()
            return bool(doc) and self._mine(doc)
        os.makedirs(self.store.base, exist_ok=True)
        try:
            fd = os.open(self.store.path(LOCK_FILE), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(self._document())
        return True

    def _remove_stale(self, doc: dict[str, Any]) -> None:
        """Take a stale lock away: renamed aside first, so of two runs taking it over at once only one removes it."""
        if not self.store.local:
            self.store.delete(LOCK_FILE)
            return
        aside = self.store.path(f"{TMP_PREFIX}{LOCK_FILE}.{os.getpid()}")
        try:
            os.rename(self.store.path(LOCK_FILE), aside)
        except FileNotFoundError:
            return
        os.unlink(aside)

    def _start_refreshing(self) -> None:
        self._stop = threading.Event()
        threading.Thread(target=self._refresh, args=(self._stop,), name="wspsr-folder-lock", daemon=True).start()

    def _refresh(self, stop: threading.Event) -> None:
        while not stop.wait(REFRESH_S):
            try:
                if self.store.local:
                    os.utime(self.store.path(LOCK_FILE))
                else:
                    self.store.write_bytes(LOCK_FILE, self._document())
            except OSError:
                pass  # a folder gone or unwritable shows in the run itself

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        doc, _ = self._read()
        if doc and self._mine(doc):
            self.store.delete(LOCK_FILE)


_HELD: dict[str, FolderLock] = {}


def lock_folder(store: Store) -> FolderLock:
    """Take the folder's lock for this process (once; ``release_folders`` gives every lock back at the job's end)."""
    lock = _HELD.get(store.uri())
    if lock is None:
        lock = FolderLock(store)
        lock.acquire(store.uri())
        _HELD[store.uri()] = lock
    return lock


def release_folders() -> None:
    """Give back every folder lock this process holds (the end of a job, successful or not)."""
    while _HELD:
        _, lock = _HELD.popitem()
        lock.release()


def entries(store: Store) -> list[str]:
    """The names directly in the folder (none when it does not exist)."""
    if store.local:
        try:
            return sorted(os.listdir(store.base))
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise OutputError(f"{store.uri()} is a file, not a folder") from None
    from pyarrow import fs as pafs

    found = store.fs.get_file_info(pafs.FileSelector(store.base, recursive=False, allow_not_found=True))
    return sorted(os.path.basename(entry.path.rstrip("/")) for entry in found)


def read_run_file(store: Store) -> dict[str, Any] | None:
    if not store.exists(RUN_FILE):
        return None
    try:
        doc = json.loads(store.read_bytes(RUN_FILE).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise OutputError(f"{store.uri(RUN_FILE)} is not a wspsr run file (not JSON): the folder was left untouched") from None
    if not isinstance(doc, dict) or "job" not in doc:
        raise OutputError(f"{store.uri(RUN_FILE)} is not a wspsr run file (no 'job'): the folder was left untouched")
    return doc


def check_ownership(store: Store, job: str) -> dict[str, Any] | None:
    """The folder's run file when this job may work in the folder (None for a new or empty folder); ``OutputError``
    for a folder that holds something else, before anything in it is touched."""
    if store.local and os.path.islink(store.base.rstrip("/")):
        raise OutputError(f"{store.uri()} is a link; give the folder it points to as --out (nothing was written)")
    run_doc = read_run_file(store)
    if run_doc is None:
        others = [name for name in entries(store) if name != LOCK_FILE]
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise OutputError(
                f"{store.uri()} is not empty and is not a wspsr {job} output folder (no {RUN_FILE}; it holds {shown}): "
                "nothing in it was touched; give --out a new or empty folder"
            )
        return None
    if run_doc.get("job") != job:
        raise OutputError(
            f"{store.uri()} holds the output of wspsr {run_doc.get('job')}, not of wspsr {job}: nothing in it was touched; "
            "give --out another folder"
        )
    return run_doc


def claim(store: Store, job: str) -> dict[str, Any] | None:
    """Check that the folder may be this job's, then lock it for this run: the previous run's file, if any."""
    check_ownership(store, job)
    lock_folder(store)
    return check_ownership(store, job)  # again under the lock: another run may have claimed it meanwhile


def remove_owned(store: Store, names: tuple[str, ...]) -> None:
    """Files and folders a job writes at the top of its own folder, removed: a link is removed itself, never what
    it points to."""
    import shutil

    for name in names:
        path = Path(store.path(name))
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        elif path.is_dir():
            shutil.rmtree(path)
