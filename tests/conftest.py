"""Shared fixtures: one local Ray and one run of the sample corpus per test session. Helpers live in ``support``."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def local_ray():
    """One in-process Ray for the whole test session (starting it costs seconds), with the dashboard, whose state API
    Ray Train needs, so training runs in it too."""
    from pipeline.run.runner import RayOptions, init_ray

    init_ray(RayOptions(num_cpus=2, progress=False, dashboard=True))
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory, local_ray):
    """The corpus job on the bundled sample with every stage and the real Whisper base: once per test session."""
    from jobs.corpus import run

    out = tmp_path_factory.mktemp("sample") / "out"
    summary = run(["--out", str(out), "--quiet"])
    return out, summary
