"""Checkpoints are read as data, never as code: every ``torch.load`` of wspsr uses ``weights_only=True``, so a
trainer state planted in a shared ``--out`` cannot run anything when a run resumes from it."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from test_train_gpu import speech_like_batch

REPO = Path(__file__).resolve().parents[2]


class Planted:
    """What an attacker pickles: unpickling it runs a command that leaves a file behind."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_resume_reads_back_its_own_state_and_refuses_a_planted_one(tmp_path):
    from pipeline.whisper.finetune import STATE_FILE, FineTuner, TrainOptions

    options = TrainOptions(steps=3, batch_size=4, warmup_steps=0, seed=0)
    tuner = FineTuner("tiny-random", options, torch.device("cpu"))
    batch = speech_like_batch(tuner.n_mels)
    for step in range(2):
        assert tuner.micro_step(batch, step)
    tuner.save(tmp_path)
    resumed = FineTuner("tiny-random", options, torch.device("cpu"))
    resumed.restore(tmp_path)
    assert resumed.state == tuner.state and resumed.scheduler.last_epoch == tuner.scheduler.last_epoch

    marker = tmp_path / "code-ran"
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    with open(tmp_path / STATE_FILE, "wb") as handle:
        torch.save({**state, "state": Planted(marker)}, handle, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(pickle.UnpicklingError):
        FineTuner("tiny-random", options, torch.device("cpu")).restore(tmp_path)
    assert not marker.exists()


def test_every_torch_load_reads_weights_only():
    """Read from the code itself: no ``torch.load`` in the package without ``weights_only=True``."""
    unsafe = []
    files = sorted(file for folder in ("pipeline", "stages", "jobs") for file in (REPO / folder).rglob("*.py"))
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and getattr(node.func.value, "id", None) == "torch":
                flags = {k.arg: k.value for k in node.keywords}
                if not (isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True):
                    unsafe.append(f"{file.relative_to(REPO)}:{node.lineno}")
    assert len(files) > 30
    assert not unsafe, unsafe
