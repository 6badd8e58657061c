"""What every job's command line shares: config file, overrides, cluster address, output folder handling."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from pipeline.config import apply_overrides, build_config, fingerprint, load_toml, to_plain
from pipeline.schema import SCHEMA_VERSION

RUNTIME_SECTIONS = ("ray",)  # how a job runs, not what it produces: outside the fingerprint


class JobFailed(RuntimeError):
    """The job ran but could not finish (e.g. training failed); its message says how to continue."""


def add_common_arguments(parser: argparse.ArgumentParser, job: str, reject_fraction: bool = True) -> None:
    parser.add_argument("--config", help=f"TOML file, one table per section (wspsr {job} --print-config shows them all)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray in-process)")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder written with a different config")
    parser.add_argument("--quiet", action="store_true", help="no progress output (bars on a terminal, a line every 10 s in a log)")
    parser.add_argument("--verbose", action="store_true", help="Ray's own logs and progress dumps, and a line per committed shard")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    if not reject_fraction:
        return
    parser.add_argument(
        "--max-reject-fraction", type=_fraction, metavar="F",
        help="exit non-zero (after writing everything) when more than this fraction of the inputs is rejected",
    )
    parser.add_argument(
        "--max-error-fraction", type=_fraction, metavar="F", default=0.01,
        help="exit non-zero (after writing everything) when more than this fraction of the inputs met an unexpected "
             "error in a stage (internal_error rejects; default 0.01)",
    )


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def resolve_config(args: argparse.Namespace, sections: Mapping[str, type], flags: Mapping[str, Any]) -> dict[str, Any]:
    """The config file, then ``--set``, then dedicated flags (``{"section.key": value or None}``)."""
    overrides = list(args.set)
    if args.address:
        overrides.append(f"ray.address={json.dumps(args.address)}")
    if args.quiet:
        overrides.append("ray.progress=false")
    if getattr(args, "verbose", False):
        overrides.append("ray.verbose=true")
    for key, value in flags.items():
        if value is not None:
            overrides.append(f"{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}")
    return build_config(sections, apply_overrides(load_toml(args.config), overrides))


def output_fingerprint(config: Mapping[str, Any], inputs: list[str], files: list[str | None] = ()) -> str:
    """Everything that decides the output rows: the non-runtime config, the inputs, and named files' contents."""
    produced = {k: v for k, v in to_plain(config).items() if k not in RUNTIME_SECTIONS}
    produced["inputs"] = inputs
    produced["schema_version"] = SCHEMA_VERSION  # output of an older layout is never resumed into
    for path in files:
        if path:
            produced[f"sha256:{path}"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return fingerprint(produced)


def releases_folders(run: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """A job's ``run`` gives back the output-folder locks it took however it ends (called by ``main`` or in-process)."""
    import functools

    @functools.wraps(run)
    def wrapped(*args: Any, **kwargs: Any) -> dict[str, Any]:
        from pipeline.io.lifecycle import release_folders

        try:
            return run(*args, **kwargs)
        finally:
            release_folders()

    return wrapped


def run_job(name: str, run: Callable[[list[str] | None], dict[str, Any]], report: Callable[[dict[str, Any]], None], argv: list[str] | None) -> int:
    """A job's ``main``: run it, print its summary; exit 2 on a usage or setup error, 1 when accounting fails."""
    from pipeline.io.lifecycle import OutputError, release_folders
    from pipeline.config import ConfigError
    from pipeline.whisper.models import ModelNotFound

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        summary = run(argv)
    except (ConfigError, OutputError, ModelNotFound, FileNotFoundError) as exc:
        print(f"wspsr {name}: error: {exc}", file=sys.stderr)
        return 2
    except JobFailed as exc:
        print(f"wspsr {name}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. a full disk while committing, object storage refusing (a worker's error, re-raised in the driver)
        where = f": {exc.filename}" if exc.filename else ""
        message = f"[Errno {exc.errno}] {exc.strerror}{where}" if exc.errno is not None else str(exc)
        print(f"wspsr {name}: error: {message}", file=sys.stderr)
        print(f"wspsr {name}: shards committed so far are complete; fix the cause and rerun the same command to finish", file=sys.stderr)
        return 1
    finally:
        release_folders()
    if not summary:  # --print-config
        return 0
    report(summary)
    if not summary["accounting"]["ok"]:
        print(f"wspsr {name}: error: accounting check failed (see summary.json)", file=sys.stderr)
        return 1
    if not summary.get("error_fraction", {}).get("ok", True):
        errors = summary["error_fraction"]
        print(f"wspsr {name}: error: {errors['internal_errors']} inputs ({errors['value']:.1%}) met an unexpected error in a stage, "
              f"more than --max-error-fraction {errors['max']}: everything else is committed; the rejects with reason "
              "internal_error name the stage and the exception", file=sys.stderr)
        return 1
    if not summary.get("reject_fraction", {}).get("ok", True):
        fraction = summary["reject_fraction"]
        print(f"wspsr {name}: error: {fraction['value']:.1%} of the inputs were rejected, more than --max-reject-fraction {fraction['max']}", file=sys.stderr)
        return 1
    return 0
