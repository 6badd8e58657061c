"""The ``wspsr`` command reaches every job."""

import pkgutil

import pytest

import jobs
from jobs import cli


def test_every_job_module_is_a_wspsr_command():
    modules = {m.name for m in pkgutil.iter_modules(jobs.__path__)} - {"cli"}
    assert modules == {module.split(".")[1] for module, _ in cli.JOBS.values()}
    assert all(name == module.split(".")[1] for name, (module, _) in cli.JOBS.items())


@pytest.mark.parametrize("job", sorted(cli.JOBS))
def test_job_help(job, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([job, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_unknown_job_is_a_usage_error(capsys):
    assert cli.main(["nonsense"]) == 2
    assert "transcribe" in capsys.readouterr().out
