"""Mixed-precision fine-tuning on a GPU (skipped where there is none): bf16 autocast where the GPU has it, fp16 with
loss scaling otherwise (V100, T4), both against the same steps in fp32 on the same GPU. Plain torch and
openai-whisper (``FineTuner``): no Ray, so it also runs on a bare GPU machine with ``pytest tests/test_train_gpu.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

STEPS = 24


def speech_like_batch(n_mels: int, examples: int = 4) -> dict:
    """Log-mel of voiced, formant-shaped sound (30 s each) and Whisper's multitask tokens for a short English text."""
    import whisper
    from whisper.tokenizer import get_tokenizer

    rng = np.random.default_rng(0)
    t = np.arange(30 * 16000) / 16000
    tokenizer = get_tokenizer(multilingual=True, language="en", task="transcribe")
    mels, tokens, starts = [], [], []
    for i in range(examples):
        pitch = 110 + 40 * i
        audio = sum(np.sin(2 * np.pi * k * pitch * t) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
        audio = (0.3 * audio / np.abs(audio).max() + rng.normal(0, 0.01, len(t))).astype(np.float32)
        mels.append(whisper.log_mel_spectrogram(torch.from_numpy(audio), n_mels).numpy().astype("<f4").tobytes())
        prompt = list(tokenizer.sot_sequence_including_notimestamps)
        text = tokenizer.encode(f" Example number {i} says hello to the world.")
        tokens.append(np.array(prompt + text + [tokenizer.eot], dtype=np.int64))
        starts.append(len(prompt))
    return {"mel": np.array(mels, dtype=object), "tokens": np.array(tokens, dtype=object), "loss_start": np.array(starts)}


def train(mixed_precision: bool, bf16: bool | None = None, monkeypatch=None, lora_rank: int = 0) -> tuple[list[float], object]:
    from pipeline.whisper.finetune import FineTuner, TrainOptions

    if bf16 is False:  # a GPU without bf16: fp16 autocast with the gradient scaler
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    options = TrainOptions(steps=STEPS, batch_size=4, lr=3e-3 if lora_rank else 1e-3, warmup_steps=0, mixed_precision=mixed_precision, seed=0,
                           lora_rank=lora_rank)
    tuner = FineTuner("tiny-random", options, torch.device("cuda"))
    batch = speech_like_batch(tuner.n_mels)
    for step in range(STEPS):
        assert tuner.micro_step(batch, step)
    return tuner.state.train_loss, tuner


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp16-scaled"])
def test_mixed_precision_trains_like_fp32(bf16, monkeypatch, tmp_path):
    import whisper

    fp32_loss, _ = train(mixed_precision=False)
    amp_loss, tuner = train(mixed_precision=True, bf16=bf16, monkeypatch=monkeypatch)
    assert tuner.use_amp and tuner.amp_dtype == (torch.bfloat16 if bf16 else torch.float16)
    assert tuner.scaler.is_enabled() == (not bf16)
    assert all(math.isfinite(x) for x in amp_loss)
    # The weights stay float32 (autocast computes in half precision; the master weights and optimizer do not).
    assert all(p.dtype == torch.float32 for p in tuner.model.parameters())
    # The same first step as fp32 (same weights, same batch) up to half precision's rounding, and it learns as fp32 does.
    assert abs(amp_loss[0] - fp32_loss[0]) / fp32_loss[0] < 0.02, (amp_loss[0], fp32_loss[0])
    assert amp_loss[-1] < 0.5 * amp_loss[0], amp_loss
    assert amp_loss[-1] < 2 * fp32_loss[-1] + 0.05, (amp_loss[-1], fp32_loss[-1])
    # The checkpoint is openai-whisper's format, loadable as any other.
    tuner.save(tmp_path)
    model = whisper.load_model(str(tmp_path / "model.pt"), device="cuda")
    assert model.dims.n_mels == tuner.n_mels


def test_lora_adapters_train_under_mixed_precision(tmp_path):
    """LoRA (peft) under bf16 autocast: only the adapters change, the loss falls, and the merged checkpoint loads."""
    import whisper

    losses, tuner = train(mixed_precision=True, lora_rank=8)
    assert tuner.use_amp and all(math.isfinite(x) for x in losses) and losses[-1] < 0.7 * losses[0], losses
    assert tuner.state.parameters["trainable"] < 0.1 * tuner.state.parameters["total"]
    tuner.save(tmp_path, final=True)
    model = whisper.load_model(str(tmp_path / "model.pt"), device="cuda")
    assert type(model.decoder.blocks[0].attn.query).__module__ == "whisper.model"
