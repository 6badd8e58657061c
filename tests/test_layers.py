"""The house rules that imports can break: Ray lives in pipeline/run only, and layers point one way
(jobs -> stages -> pipeline). Read from the source with ast, so an import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RAY_HOME = "pipeline/run/"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(*folders: str) -> dict[str, set[str]]:
    return {p.relative_to(REPO).as_posix(): _imports(p) for folder in folders for p in sorted((REPO / folder).rglob("*.py"))}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_only_the_ray_home_imports_ray():
    offenders = {path: sorted(n for n in names if _top(n) == "ray")
                 for path, names in _modules("pipeline", "stages", "jobs").items() if not path.startswith(RAY_HOME)}
    assert not {p: n for p, n in offenders.items() if n}, f"Ray is imported outside {RAY_HOME}"


def test_layers_point_one_way():
    upward = {}
    for path, names in _modules("pipeline", "stages").items():
        forbidden = {"jobs"} | ({"stages"} if path.startswith("pipeline/") else set())
        bad = sorted(n for n in names if _top(n) in forbidden)
        if bad:
            upward[path] = bad
    assert not upward, f"imports that run back up a layer (jobs -> stages -> pipeline): {upward}"


def test_the_rule_sees_a_violation(tmp_path):
    """The checks above read real imports: a module that imports Ray and a job is caught."""
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    import ray.data\n    from jobs.corpus import run\n")
    assert {"ray.data", "jobs.corpus"} <= _imports(module)
