"""Fine-tuning Whisper, one worker's part: the model and optimizer, a micro-batch step, checkpoints and held-out
evaluation. Plain torch and openai-whisper; ``pipeline.run.train`` runs it under Ray Train (data shards, DDP
process group, checkpoint reports), so this module knows nothing of Ray or of corpus rows.

A checkpoint folder holds ``model.pt`` in openai-whisper's format (``whisper.load_model`` reads it) and
``trainer_state.pt`` (optimizer, scheduler, step, position in the epoch, history), so a restarted run continues
with the same data order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

log = logging.getLogger("wspsr")

MODEL_FILE = "model.pt"
STATE_FILE = "trainer_state.pt"
IGNORE = -100  # label of tokens without loss (prompt, padding)


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 100  # optimizer steps
    batch_size: int = 8  # examples per worker per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-5  # peak learning rate (Whisper's fine-tuning range: 1e-5 for base, lower for larger models)
    warmup_steps: int = 10  # linear warmup from 0, then linear decay to 0 at ``steps``
    weight_decay: float = 0.1  # on weight matrices only (not biases, norms)
    adam_betas: tuple[float, ...] = (0.9, 0.98)  # as in the Whisper paper
    adam_eps: float = 1e-6
    max_grad_norm: float = 1.0
    mixed_precision: bool = True  # GPU only: bf16 where supported, else fp16 with loss scaling
    checkpoint_every: int = 50  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 3  # the newest ones; 0 keeps all
    eval_every: int = 0  # held-out loss every N steps (0: only before and after); WER only before and after
    eval_max_examples: int = 64  # held-out windows decoded for WER
    shuffle_buffer: int = 256  # examples per worker mixed by the local shuffle (plus file order shuffled by seed)
    seed: int = 0
    max_failures: int = 1  # worker failures Ray Train recovers from (restarting from the last checkpoint)

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.grad_accum, self.checkpoint_every, self.eval_max_examples) < 1:
            raise ValueError("steps, batch_size, grad_accum, checkpoint_every and eval_max_examples must be at least 1")
        if self.lr <= 0 or self.warmup_steps < 0 or self.keep_checkpoints < 0 or self.shuffle_buffer < 0:
            raise ValueError("lr must be positive; warmup_steps, keep_checkpoints and shuffle_buffer not negative")
        if len(self.adam_betas) != 2:
            raise ValueError("adam_betas needs two values")


@dataclass
class TrainState:
    """Where training stands; saved with every checkpoint."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of ``epoch`` already consumed
    examples: int = 0
    train_loss: list[float] = field(default_factory=list)  # per optimizer step (mean over its tokens)
    learning_rate: list[float] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"step", "loss", ...}
    skipped: dict[str, int] = field(default_factory=dict)  # windows no example could be built from, by reason
    seconds: float = 0.0


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1, then linear decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def usable_examples(batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """Drop the rows the example builder rejected; (kept rows, {reason: count})."""
    reasons = batch.get("reject_reason")
    if reasons is None or all(r is None for r in reasons):
        return batch, {}
    keep = np.array([r is None for r in reasons])
    skipped: dict[str, int] = {}
    for reason in reasons:
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
    return {k: v[keep] for k, v in batch.items()}, skipped


def collate(batch: dict[str, Any], n_mels: int):
    """Stack mels and pad token sequences: (mel, decoder input, labels); labels hide the prompt and padding."""
    import torch

    mel = torch.from_numpy(np.stack([np.frombuffer(m, dtype="<f4").reshape(n_mels, -1) for m in batch["mel"]]))
    sequences = [np.asarray(t, dtype=np.int64) for t in batch["tokens"]]
    length = max(len(s) for s in sequences) - 1
    inputs = np.zeros((len(sequences), length), dtype=np.int64)
    labels = np.full((len(sequences), length), IGNORE, dtype=np.int64)
    for i, (tokens, start) in enumerate(zip(sequences, batch["loss_start"])):
        n = len(tokens) - 1
        inputs[i, :n] = tokens[:-1]
        inputs[i, n:] = tokens[-1]  # padding after <|endoftext|> (never a label)
        labels[i, start - 1 : n] = tokens[start:]
    return mel, torch.from_numpy(inputs), torch.from_numpy(labels)


def token_loss(model, mel, inputs, labels):
    """(summed cross-entropy, number of labelled tokens)."""
    import torch.nn.functional as F

    logits = model(mel, inputs)
    loss = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="sum")
    return loss, int((labels != IGNORE).sum())


def load_trainer_state(folder: Path) -> dict[str, Any]:
    import torch

    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)


def load_model_for_training(spec: str, device):
    """The openai-whisper module in float32 (mixed precision comes from autocast, not from the weights)."""
    from pipeline.whisper.models import load_openai_whisper, resolve_model

    return load_openai_whisper(resolve_model(spec), device="cpu").float().to(device).train()


def _parameter_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class FineTuner:
    """One worker's model, optimizer, schedule and loss scaling, and where training stands (``state``)."""

    def __init__(self, model_spec: str, options: TrainOptions, device):
        import torch

        torch.manual_seed(options.seed)
        self.options, self.device = options, device
        self.model = load_model_for_training(model_spec, device)
        self.net = self.model  # what the step runs: the DDP wrapper once ``distribute`` is called
        self.n_mels = self.model.dims.n_mels
        self.optimizer = torch.optim.AdamW(
            _parameter_groups(self.model, options.weight_decay), lr=options.lr, betas=tuple(options.adam_betas), eps=options.adam_eps
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, options.warmup_steps, options.steps))
        self.use_amp = options.mixed_precision and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.state = TrainState()
        self.distributed = False
        self._micro = 0
        self._step_loss = 0.0

    def restore(self, folder: Path) -> None:
        """Continue from a checkpoint folder: weights, optimizer moments, schedule, RNG and position in the data."""
        import torch

        saved = torch.load(folder / MODEL_FILE, map_location=self.device, weights_only=True)
        self.model.load_state_dict(saved["model_state_dict"])
        trainer = load_trainer_state(folder)
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        self.state = TrainState(**trainer["state"])
        torch.set_rng_state(trainer["torch_rng"])

    def distribute(self, wrap) -> None:
        """Train under DDP: ``wrap`` turns the model into its DDP wrapper (Ray Train's ``prepare_model``)."""
        import torch

        # openai-whisper keeps its alignment heads as a sparse buffer, which DDP cannot broadcast; it is not trained.
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, ["alignment_heads"])
        self.net = wrap(self.model)
        self.distributed = True

    def save(self, folder: Path) -> None:
        import torch

        from pipeline.whisper.ct2 import encode_alignment_heads

        heads = self.model.alignment_heads.to_dense() if self.model.alignment_heads.is_sparse else self.model.alignment_heads
        # The start model's alignment heads (word timings; not trained), which whisper.load_model would not know for
        # a file: load_converted_model and the CTranslate2 export read them from here.
        torch.save({"dims": dataclasses.asdict(self.model.dims), "model_state_dict": self.model.state_dict(),
                    "alignment_heads": encode_alignment_heads(heads.nonzero().tolist(), *heads.shape)}, folder / MODEL_FILE)
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "state": dataclasses.asdict(self.state),
             "torch_rng": torch.get_rng_state()},
            folder / STATE_FILE,
        )

    def micro_step(self, batch: dict[str, Any], index: int) -> bool:
        """Train on micro-batch ``index`` of the epoch; True when it completed an optimizer step."""
        import torch

        options, state = self.options, self.state
        batch, skipped = usable_examples(batch)
        for reason, n in skipped.items():
            state.skipped[reason] = state.skipped.get(reason, 0) + n
        state.batches_in_epoch = index + 1
        if not len(batch["tokens"]):  # (with several workers this would desynchronise DDP: rare enough to accept)
            return False
        mel, inputs, labels = (t.to(self.device) for t in collate(batch, self.n_mels))
        self._micro += 1
        last_micro = self._micro % options.grad_accum == 0
        sync = self.net.no_sync() if self.distributed and not last_micro else contextlib.nullcontext()
        with sync:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                loss_sum, count = token_loss(self.net, mel, inputs, labels)
            # Mean over this micro-batch's tokens, averaged over the accumulation.
            self.scaler.scale(loss_sum / max(count, 1) / options.grad_accum).backward()
        self._step_loss += float(loss_sum.detach()) / max(count, 1) / options.grad_accum
        state.examples += len(labels)
        if not last_micro:
            return False
        self._optimizer_step()
        return True

    def _optimizer_step(self) -> None:
        import torch

        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.learning_rate.append(self.scheduler.get_last_lr()[0])
        self.scheduler.step()
        self.state.step += 1
        self.state.train_loss.append(self._step_loss)
        self._step_loss = 0.0

    def evaluate(self, batches: Iterable[dict[str, Any]], with_wer: bool) -> dict[str, Any]:
        return dict(evaluate(self.model, batches, self.n_mels, self.device, self.options.eval_max_examples, with_wer), step=self.state.step)


def evaluate(model, batches: Iterable[dict[str, Any]], n_mels: int, device, max_decode: int, with_wer: bool) -> dict[str, Any]:
    """Held-out loss over every example and, when asked, WER of greedy decoding over up to ``max_decode`` speech
    windows (grouped by language and task, as Whisper decodes one language per batch)."""
    import torch

    was_training = model.training
    model.eval()
    loss_sum, tokens, examples = 0.0, 0, 0
    to_decode: dict[tuple[str, str], list[tuple[Any, str]]] = {}
    decodable = 0
    with torch.no_grad():
        for batch in batches:
            batch, _ = usable_examples(batch)
            if not len(batch["tokens"]):
                continue
            mel, inputs, labels = collate(batch, n_mels)
            mel, inputs, labels = mel.to(device), inputs.to(device), labels.to(device)
            loss, count = token_loss(model, mel, inputs, labels)
            loss_sum, tokens, examples = loss_sum + float(loss), tokens + count, examples + len(labels)
            if with_wer:
                for i in range(len(labels)):
                    if batch["has_speech"][i] and batch["text"][i] and decodable < max_decode:
                        key = (batch["language"][i], batch["task"][i])
                        to_decode.setdefault(key, []).append((mel[i], batch["text"][i]))
                        decodable += 1
        result: dict[str, Any] = {"loss": loss_sum / tokens if tokens else None, "examples": examples, "tokens": tokens}
        if with_wer:
            result.update(_decoded_wer(model, to_decode, device))
            result["wer_windows"] = decodable
    model.train(was_training)
    return result


def _decoded_wer(model, to_decode: dict[tuple[str, str], list[tuple[Any, str]]], device) -> dict[str, Any]:
    import torch
    import whisper

    from pipeline.eval.metrics import word_errors

    errors = words = 0
    per_language: dict[str, dict[str, Any]] = {}
    for (language, task), items in sorted(to_decode.items()):
        options = whisper.DecodingOptions(language=language, task=task, without_timestamps=True, fp16=device.type == "cuda")
        for start in range(0, len(items), 16):
            chunk = items[start : start + 16]
            decoded = whisper.decode(model, torch.stack([m for m, _ in chunk]), options)
            for (_, reference), hypothesis in zip(chunk, decoded):
                e, n = word_errors(reference, hypothesis.text, english=language == "en" or task == "translate")
                errors, words = errors + e, words + n
                entry = per_language.setdefault(language, {"errors": 0, "words": 0, "windows": 0})
                entry["errors"] += e
                entry["words"] += n
                entry["windows"] += 1
    return {"wer": errors / words if words else None,
            "wer_per_language": {k: dict(v, wer=v["errors"] / max(v["words"], 1)) for k, v in per_language.items()}}


def brief(figures: dict[str, Any]) -> str:
    if figures["loss"] is None:
        return "no held-out windows"
    wer = figures.get("wer")
    return f"loss {figures['loss']:.4f} over {figures['examples']} windows" + (f", WER {wer:.1%}" if wer is not None else "")
