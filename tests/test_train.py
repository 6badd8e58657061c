"""``wspsr train`` end to end with Ray Train on the sample corpus: the loss falls, checkpoints load in openai-whisper,
and a run that fails partway and is resumed ends exactly where an uninterrupted run does. Runs share the session's
Ray (``train_in_process``); only the run whose exit code and messages are the point runs as its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.data import JFK, JFK_TEXT

REPO = Path(__file__).resolve().parent.parent


def train(out: Path, corpus: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "jobs.train", "--corpus", str(corpus), "--out", str(out), "--quiet", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})


def train_in_process(out: Path, corpus: Path, *args: str) -> dict:
    """The job's own ``run`` on the session's Ray (started with the dashboard Ray Train needs): no Ray start per run."""
    from jobs.train import run

    return run(["--corpus", str(corpus), "--out", str(out), "--quiet", *args])


def trainer_state(out: Path, step: int) -> dict:
    import torch

    return torch.load(out / "checkpoints" / f"step-{step:06d}" / "trainer_state.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_lora_trains_few_parameters_merges_and_reports_error_rates_per_language(sample_run, tmp_path):
    """LoRA (peft) on the tiny random model over the sample corpus, with temperature sampling and an evaluation every
    10 steps: under 10 % of the parameters train, the loss halves, checkpoints hold the adapters (the last one also
    the merged model, which openai-whisper loads and `wspsr export` serves), and every evaluation has error rates
    per language in its own measure, MER for the code-switched source (held out by this split seed)."""
    import whisper

    corpus, _ = sample_run
    out = tmp_path / "lora"
    train_in_process(out, corpus, "--model", "tiny-random", "--lora-rank", "8", "--steps", "30", "--batch-size", "4", "--lr", "3e-3",
                     "--set", "train.warmup_steps=3", "--set", "train.checkpoint_every=15", "--set", "train.eval_every=10",
                     "--set", "data.cache_examples=true", "--set", "train.eval_max_examples=8", "--set", "data.held_out_fraction=0.2",
                     "--set", "data.split_seed=6", "--set", "sampling.temperature=3")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "lora" and 0 < metrics["parameters"]["trainable_fraction"] < 0.1, metrics["parameters"]
    losses = metrics["train_loss"]
    assert len(losses) == metrics["steps"] == 30
    assert sum(losses[-5:]) / 5 <= 0.5 * losses[0], losses
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # adapters only until the end; the end also merged, in openai-whisper's format
    middle, last = out / "checkpoints" / "step-000015", out / "checkpoints" / "step-000030"
    assert sorted(p.name for p in middle.iterdir()) == ["adapter.pt", "trainer_state.pt"]
    assert {"adapter.pt", "model.pt"} <= {p.name for p in last.iterdir()} and metrics["checkpoint"] == str(last / "model.pt")
    model = whisper.load_model(metrics["checkpoint"], device="cpu")  # openai-whisper's own loader, no peft
    assert model.dims.n_text_state == 64 and type(model.decoder.blocks[0].attn.query).__module__ == "whisper.model"
    # error rates before, during (every 10 steps) and after, per group in the measure that fits it
    evals = metrics["eval"]
    assert [e["step"] for e in evals["during"]] == [10, 20] and evals["before"]["step"] == 0 and evals["after"]["step"] == 30
    for figures in (evals["before"], *evals["during"], evals["after"]):
        rates = figures["error_rates"]
        assert rates["code_switched"]["measure"] == "mer" and rates["code_switched"]["units"] > 0
        assert rates["zh"]["measure"] == "cer" and rates["en"]["measure"] == "wer" and figures["error_rate"] is not None
    assert evals["after"]["loss"] < evals["before"]["loss"]
    # the realised mix is what was trained on, flatter than the corpus's
    sampling = metrics["sampling"]
    assert sum(sampling["realised"].values()) == metrics["examples_seen"]
    natural = {g: n / sum(sampling["natural"].values()) for g, n in sampling["natural"].items()}
    biggest = max(natural, key=natural.get)
    assert sampling["target_shares"][biggest] < natural[biggest] and sampling["rates"][biggest] < 1

    # the merged checkpoint -> export -> wspsr transcribe with the default (faster-whisper) engine
    from jobs.export import main as export
    from jobs.transcribe import run as transcribe

    served = tmp_path / "served"
    assert export([str(last), "--out", str(served), "--quantization", "int8"]) == 0
    assert json.loads((served / "config.json").read_text())["alignment_heads"]  # the start model's, kept by the checkpoint
    done = transcribe(["--inputs", str(JFK), "--out", str(tmp_path / "transcripts"), "--quiet", "--model", str(served)])
    assert done["inputs"]["in"] == done["inputs"]["kept"] == 1 and done["accounting"]["ok"]


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(sample_run, tmp_path):
    import torch

    corpus, _ = sample_run
    common = ["--model", "tiny-random", "--steps", "6", "--batch-size", "4", "--lr", "1e-3", "--set", "data.max_windows=14",
              "--set", "train.checkpoint_every=3", "--set", "train.warmup_steps=2", "--set", "train.max_failures=0",
              "--set", "data.held_out_fraction=0"]  # no held-out evaluation: the point is the training state
    whole = tmp_path / "whole"
    train_in_process(whole, corpus, *common)

    broken = tmp_path / "broken"
    faults = tmp_path / "faults"
    faults.mkdir()
    failed = train(broken, corpus, *common, env={"WSPSR_FAULTS": "raise@train:step-4", "WSPSR_FAULTS_DIR": str(faults)})
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "--resume" in failed.stderr and "injected fault" in failed.stderr
    assert [p.name for p in (broken / "checkpoints").glob("step-*")] == ["step-000003"]
    refused = train(broken, corpus, *common)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    train_in_process(broken, corpus, *common, "--resume")

    a, b = trainer_state(whole, 6), trainer_state(broken, 6)
    assert a["state"]["step"] == b["state"]["step"] == 6
    assert (a["state"]["epoch"], a["state"]["batches_in_epoch"]) == (b["state"]["epoch"], b["state"]["batches_in_epoch"])
    assert a["state"]["epoch"] >= 1  # the run crossed an epoch boundary, so the resumed data order was rebuilt
    assert a["state"]["train_loss"] == pytest.approx(b["state"]["train_loss"], rel=1e-5)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys() and len(opt_a) > 0
    for key in opt_a:
        assert int(opt_a[key]["step"]) == int(opt_b[key]["step"]) == 6
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(opt_a[key][name], opt_b[key][name], rtol=1e-4, atol=1e-7), (key, name)
    weights_a = torch.load(whole / "checkpoints" / "step-000006" / "model.pt", weights_only=True)["model_state_dict"]
    weights_b = torch.load(broken / "checkpoints" / "step-000006" / "model.pt", weights_only=True)["model_state_dict"]
    assert all(torch.allclose(weights_a[k], weights_b[k], rtol=1e-4, atol=1e-6) for k in weights_a)


@pytest.mark.slow
def test_fine_tune_base_on_the_sample_corpus(sample_run, tmp_path):
    """Whisper base, two steps on CPU: held-out loss must not rise, and the checkpoint still transcribes."""
    import whisper

    from pipeline.io.media import decode_audio
    from pipeline.eval.metrics import word_error_rate

    corpus, _ = sample_run
    out = tmp_path / "base"
    train_in_process(out, corpus, "--model", "base", "--steps", "2", "--batch-size", "2", "--lr", "1e-5", "--set", "train.warmup_steps=1",
                     "--set", "train.checkpoint_every=2", "--set", "data.cache_examples=true", "--set", "train.eval_max_examples=2")
    metrics = json.loads((out / "metrics.json").read_text())
    before, after = metrics["eval"]["before"], metrics["eval"]["after"]
    assert metrics["steps"] == 2 and before["examples"] == after["examples"] > 0
    assert after["loss"] <= before["loss"], (before, after)
    model = whisper.load_model(metrics["checkpoint"], device="cpu")
    text = model.transcribe(decode_audio(JFK).astype("float32") / 32768, language="en", fp16=False)["text"]
    assert word_error_rate([JFK_TEXT], [text]) < 0.2, text


@pytest.mark.slow
def test_two_workers_train_under_ddp(sample_run, tmp_path):
    """Two CPU workers (DDP over gloo) split the stream and train together."""
    corpus, _ = sample_run
    out = tmp_path / "ddp"
    train_in_process(out, corpus, "--model", "tiny-random", "--steps", "2", "--batch-size", "2", "--lr", "1e-3", "--workers", "2",
                     "--set", "ray.cpus_per_worker=0.5", "--set", "data.max_windows=12", "--set", "train.warmup_steps=0",
                     "--set", "train.eval_max_examples=1")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and len(metrics["train_loss"]) == 2
    assert metrics["eval"]["after"]["loss"] < metrics["eval"]["before"]["loss"]
