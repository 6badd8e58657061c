"""The framework's contracts: config parsing, the stage wrapper, shard commit, and the one-way layering."""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.io.commit import OutputDir, OutputError, OutputOptions, inputs_of, split_by_bytes
from pipeline.config import ConfigError, apply_overrides, build_config, fingerprint, to_plain
from pipeline.schema import RejectReason, table_from_rows
from pipeline.stage import Reject, Stage, map_rows, run_stages

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Opts:
    rate: float = 0.5
    name: str = "x"
    roots: tuple[str, ...] = ()
    limit: int | None = None


def test_config_builds_typed_frozen_options():
    raw = apply_overrides({"a": {"rate": 1}}, ["a.name=hello world", "a.roots=['p', 'q']", "a.limit=3"])
    config = build_config({"a": Opts}, raw)
    assert config["a"] == Opts(rate=1.0, name="hello world", roots=("p", "q"), limit=3)
    assert fingerprint(to_plain(config)) == fingerprint(to_plain(build_config({"a": Opts}, raw)))
    assert fingerprint(to_plain(config)) != fingerprint(to_plain(build_config({"a": Opts}, {})))


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"a": {"rat": 1}}, "unknown key"),
        ({"b": {}}, "unknown config section"),
        ({"a": {"rate": "fast"}}, "must be float"),
        ({"a": {"limit": True}}, "must be int"),
    ],
)
def test_config_errors_are_explicit(raw, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"a": Opts}, raw)


def test_override_syntax_is_checked():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["rate=1"])


def _keep_even(batch: pa.Table, options) -> pa.Table:
    return map_rows(batch, lambda row: dict(row, half=row["n"] // 2) if row["n"] % 2 == 0 else Reject(RejectReason.BAD_AUDIO, f"odd {row['n']}"))


def _count_seen(batch: pa.Table, options) -> pa.Table:
    return batch.append_column("seen", pa.array([True] * batch.num_rows))


def test_rejected_rows_skip_later_stages_and_name_their_stage():
    batch = table_from_rows([{"source_id": str(n), "n": n} for n in range(5)])
    out = run_stages([Stage("keep_even", _keep_even, None), Stage("count_seen", _count_seen, None)], batch).to_pylist()
    kept = [r for r in out if r["reject_reason"] is None]
    rejected = [r for r in out if r["reject_reason"] is not None]
    assert sorted(r["n"] for r in kept) == [0, 2, 4] and all(r["seen"] for r in kept)
    assert {(r["reject_stage"], r["reject_detail"]) for r in rejected} == {("keep_even", "odd 1"), ("keep_even", "odd 3")}
    assert all(r["seen"] is None for r in rejected)


def test_commit_protocol(tmp_path, monkeypatch):
    out = OutputDir(tmp_path / "o", ("t",), "fp1")
    out.prepare({"job": "x"}, overwrite=False)
    table = pa.table({"v": list(range(10))})
    marker = out.commit_shard("s1", {"t": [table]}, {"kept": ["a"], "rejected": ["b"]}, {"n": 1}, OutputOptions(),
                              inputs=inputs_of(["a", "b"], [7, 3]))
    assert marker["files"] == {"t": ["part-s1-000.parquet"]} and marker["rows"] == {"t": 10}
    assert out.committed_keys().tolist() == [3, 7] and marker["inputs"] == {"ids": ["a", "b"], "keys": [7, 3]}
    # a crash between a shard's files and its marker: the pending record names what the next start removes
    (tmp_path / "fired").mkdir()
    monkeypatch.setenv("WSPSR_FAULTS", "raise@commit")
    monkeypatch.setenv("WSPSR_FAULTS_DIR", str(tmp_path / "fired"))
    with pytest.raises(RuntimeError, match="injected"):
        out.commit_shard("s2", {"t": [table]}, {"kept": ["c"]}, {"n": 1}, OutputOptions(), inputs=inputs_of(["c"], [5]))
    (tmp_path / "o" / "t" / ".tmp-part-s2-000.parquet.abcd1234").write_bytes(b"x")  # an interrupted atomic write
    (tmp_path / "o" / "t" / "part-mine-000.parquet").write_bytes(b"a file no record names")
    removed = sorted(os.path.basename(p) for p in out.finish_pending())
    assert removed == [".tmp-part-s2-000.parquet.abcd1234", "part-s2-000.parquet"]
    assert (tmp_path / "o" / "t" / "part-mine-000.parquet").exists()  # never the job's: never removed
    assert [os.path.basename(p) for p in out.committed_files("t")] == ["part-s1-000.parquet"]
    with pytest.raises(OutputError, match="different config"):
        OutputDir(tmp_path / "o", ("t",), "fp2").prepare({"job": "x"}, overwrite=False)
    other = OutputDir(tmp_path / "o", ("t",), "fp2")
    other.prepare({"job": "x"}, overwrite=True)
    assert other.committed_keys().tolist() == [] and [p.name for p in (tmp_path / "o" / "t").iterdir()] == ["part-mine-000.parquet"]
    assert json.loads((tmp_path / "o" / "run.json").read_text())["fingerprint"] == "fp2"


def test_split_by_bytes_bounds_each_part():
    table = pa.table({"v": list(range(7))})
    parts = split_by_bytes(table, [5, 5, 5, 20, 1, 1, 1], 10)
    assert [p["v"].to_pylist() for p in parts] == [[0, 1], [2], [3], [4, 5, 6]]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "package, forbidden",
    [("stages", {"ray", "jobs"}), ("pipeline", {"stages", "jobs"})],
)
def test_layers_point_one_way(package, forbidden):
    for path in (ROOT / package).rglob("*.py"):
        assert not (_imports(path) & forbidden), f"{path.relative_to(ROOT)} imports {_imports(path) & forbidden}"


def test_model_pools_grow_to_the_gpus_of_the_cluster():
    """One actor on CPUs; with GPUs, an autoscaling pool up to one actor per GPU (two per GPU at half a GPU each),
    bounded by ray.model_actors_max; a fixed size wins over both."""
    from pipeline.run.runner import RayOptions, pool_bounds

    assert pool_bounds(RayOptions(), cluster_gpus=0, gpus_per_actor=0) == (1, 1)
    assert pool_bounds(RayOptions(), cluster_gpus=8, gpus_per_actor=1) == (1, 8)
    assert pool_bounds(RayOptions(model_gpus=0.5), cluster_gpus=8, gpus_per_actor=0.5) == (1, 16)
    assert pool_bounds(RayOptions(model_actors_max=32), cluster_gpus=8, gpus_per_actor=1) == (1, 32)  # an autoscaling cluster
    assert pool_bounds(RayOptions(model_actors=3), cluster_gpus=8, gpus_per_actor=1) == (3, 3)
    assert pool_bounds(RayOptions(), cluster_gpus=8, gpus_per_actor=1, stage_actors=2) == (2, 2)
    with pytest.raises(ValueError, match="model_actors"):
        RayOptions(model_actors=0)


def _spin_on_two(batch: pa.Table, options) -> pa.Table:
    if 2 in batch["n"].to_pylist():
        while True:  # a row built to keep a stage busy for ever
            pass
    return batch.append_column("seen", pa.array([True] * batch.num_rows))


def _raise_on_three(batch: pa.Table, options) -> pa.Table:
    if 3 in batch["n"].to_pylist():
        raise OverflowError("int too large to convert")
    return batch


def test_a_row_that_raises_or_runs_too_long_is_its_own_reject_and_the_batch_goes_on():
    batch = table_from_rows([{"source_id": str(n), "n": n} for n in range(5)])
    stages = [Stage("spin", _spin_on_two, None, timeout_s=0.3), Stage("check", _raise_on_three, None)]
    out = {r["n"]: r for r in run_stages(stages, batch).to_pylist()}
    assert (out[2]["reject_reason"], out[2]["reject_stage"]) == ("stage_timeout", "spin")
    assert (out[3]["reject_reason"], out[3]["reject_stage"], out[3]["reject_detail"]) == (
        "internal_error", "check", "OverflowError: int too large to convert")
    assert all(out[n]["reject_reason"] is None and out[n]["seen"] for n in (0, 1, 4))
