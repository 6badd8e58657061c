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
ADAPTER_FILE = "adapter.pt"  # LoRA: the adapter weights alone (the start model is loaded again to resume)
# openai-whisper's projections, as module name suffixes: attention (self and cross) query, key, value and output,
# and the MLP's two layers.
LORA_TARGETS = ("query", "key", "value", "out", "mlp.0", "mlp.2")
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
    eval_every: int = 0  # held-out loss and error rates every N steps too (0: only before and after)
    eval_max_examples: int = 64  # held-out windows decoded for the error rates (WER, CER, MER)
    shuffle_buffer: int = 256  # examples per worker mixed by the local shuffle (plus file order shuffled by seed)
    seed: int = 0
    max_failures: int = 1  # worker failures Ray Train recovers from (restarting from the last checkpoint)
    # LoRA (through peft): rank > 0 trains low-rank adapters on ``lora_targets`` and nothing else; checkpoints hold
    # the adapters, the last one also the merged model. 0: full fine-tuning.
    lora_rank: int = 0
    lora_alpha: float = 16.0  # the adapters' scale is alpha / rank
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = LORA_TARGETS
    freeze_encoder: bool = False  # train the decoder only (full fine-tuning: its weights; LoRA: adapters on it only)

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.grad_accum, self.checkpoint_every, self.eval_max_examples) < 1:
            raise ValueError("steps, batch_size, grad_accum, checkpoint_every and eval_max_examples must be at least 1")
        if self.lr <= 0 or self.warmup_steps < 0 or self.keep_checkpoints < 0 or self.shuffle_buffer < 0:
            raise ValueError("lr must be positive; warmup_steps, keep_checkpoints and shuffle_buffer not negative")
        if len(self.adam_betas) != 2:
            raise ValueError("adam_betas needs two values")
        if self.lora_rank < 0 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1 or (self.lora_rank and not self.lora_targets):
            raise ValueError("lora_rank must not be negative, lora_alpha positive, lora_dropout in [0, 1), lora_targets not empty")


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
    mix: dict[str, int] = field(default_factory=dict)  # examples trained on per group (language, or code_switched)
    parameters: dict[str, int] = field(default_factory=dict)  # trainable and total


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


def example_groups(batch: dict[str, Any]) -> list[str]:
    """The group (language, or code_switched) of each example of a batch, for the realised training mix."""
    from pipeline.eval.splits import window_group

    n = len(batch["tokens"])
    languages = batch.get("language", [None] * n)
    switched = batch.get("code_switched", [False] * n)
    return [window_group(language, flag) for language, flag in zip(languages, switched)]


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

    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)


def load_model_for_training(spec: str, device):
    """The openai-whisper module in float32 (mixed precision comes from autocast, not from the weights)."""
    from pipeline.whisper.models import load_openai_whisper, resolve_model

    return load_openai_whisper(resolve_model(spec), device="cpu").float().to(device).train()


def _parameter_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def add_lora(model, options: TrainOptions):
    """LoRA adapters (peft) on the model's projections named by ``options.lora_targets`` (the decoder's only with
    ``freeze_encoder``); everything else frozen. The model itself is changed in place (its Linear layers wrapped), so
    its forward, openai-whisper's decoding and its kv-cache hooks stay as they are; returns the peft model, which
    saves the adapters and merges them."""
    import re

    from peft import LoraConfig, get_peft_model

    parts = "encoder|decoder" if not options.freeze_encoder else "decoder"
    targets = "|".join(re.escape(t) for t in options.lora_targets)
    config = LoraConfig(r=options.lora_rank, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
                        target_modules=rf"(?:{parts})\..*\.(?:{targets})")
    return get_peft_model(model, config)


class FineTuner:
    """One worker's model, optimizer, schedule and loss scaling, and where training stands (``state``)."""

    def __init__(self, model_spec: str, options: TrainOptions, device):
        import torch

        torch.manual_seed(options.seed)
        self.options, self.device = options, device
        self.model = load_model_for_training(model_spec, device)
        if options.freeze_encoder:
            self.model.encoder.requires_grad_(False)
        self.peft = add_lora(self.model, options) if options.lora_rank else None  # self.model now holds the adapters
        self.net = self.model  # what the step runs: the DDP wrapper once ``distribute`` is called
        self.n_mels = self.model.dims.n_mels
        self.optimizer = torch.optim.AdamW(
            _parameter_groups(self.model, options.weight_decay), lr=options.lr, betas=tuple(options.adam_betas), eps=options.adam_eps
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, options.warmup_steps, options.steps))
        self.use_amp = options.mixed_precision and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.state = TrainState(parameters=self.parameter_counts())
        self.distributed = False
        self._micro = 0
        self._step_loss = 0.0

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return {"trainable": trainable, "total": sum(p.numel() for p in self.model.parameters())}

    def restore(self, folder: Path) -> None:
        """Continue from a checkpoint folder: weights (or LoRA adapters), optimizer moments, schedule, RNG and
        position in the data."""
        import torch

        if self.peft is not None:
            from peft import set_peft_model_state_dict

            saved = torch.load(folder / ADAPTER_FILE, map_location=self.device, weights_only=True)
            set_peft_model_state_dict(self.peft, saved["adapter_state_dict"])
        else:
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

    def save(self, folder: Path, final: bool = False) -> None:
        """A checkpoint: the model in openai-whisper's format (``model.pt``) and the trainer's state. With LoRA the
        adapters alone (``adapter.pt``), and at the ``final`` step also the model with them merged in (after which
        this tuner trains no more)."""
        import torch

        if self.peft is not None:
            from peft import get_peft_model_state_dict

            lora = {k: getattr(self.options, k) for k in ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "freeze_encoder")}
            torch.save({"adapter_state_dict": get_peft_model_state_dict(self.peft), "lora": lora}, folder / ADAPTER_FILE)
        if self.peft is None or final:
            self._save_model(folder / MODEL_FILE)
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "state": dataclasses.asdict(self.state),
             "torch_rng": torch.get_rng_state()},
            folder / STATE_FILE,
        )

    def _save_model(self, path: Path) -> None:
        import torch

        from pipeline.whisper.ct2 import encode_alignment_heads

        model = self.model
        if self.peft is not None:  # the adapters merged into the weights: a plain Whisper again
            model = self.peft.merge_and_unload()
            self.peft = None
        heads = model.alignment_heads.to_dense() if model.alignment_heads.is_sparse else model.alignment_heads
        # The start model's alignment heads (word timings; not trained), which whisper.load_model would not know for
        # a file: load_converted_model and the CTranslate2 export read them from here.
        torch.save({"dims": dataclasses.asdict(model.dims), "model_state_dict": model.state_dict(),
                    "alignment_heads": encode_alignment_heads(heads.nonzero().tolist(), *heads.shape)}, path)

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
        for group in example_groups(batch):
            state.mix[group] = state.mix.get(group, 0) + 1
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

    def evaluate(self, batches: Iterable[dict[str, Any]], with_errors: bool) -> dict[str, Any]:
        return dict(evaluate(self.model, batches, self.n_mels, self.device, self.options.eval_max_examples, with_errors), step=self.state.step)


def evaluate(model, batches: Iterable[dict[str, Any]], n_mels: int, device, max_decode: int, with_errors: bool) -> dict[str, Any]:
    """Held-out loss over every example and, when asked, error rates of greedy decoding over up to ``max_decode``
    speech windows, per group (language, or code-switched speech) in the measure that fits it (WER, CER, MER:
    ``pipeline.eval.metrics.error_measure``); decoded a language and task at a time, as Whisper decodes."""
    import torch

    was_training = model.training
    model.eval()
    loss_sum, tokens, examples = 0.0, 0, 0
    to_decode: dict[tuple[str, str], list[tuple[Any, str, str]]] = {}
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
            if with_errors:
                for i, group in enumerate(example_groups(batch)):
                    if batch["has_speech"][i] and batch["text"][i] and decodable < max_decode:
                        key = (batch["language"][i], batch["task"][i])
                        to_decode.setdefault(key, []).append((mel[i], batch["text"][i], group))
                        decodable += 1
        result: dict[str, Any] = {"loss": loss_sum / tokens if tokens else None, "examples": examples, "tokens": tokens}
        if with_errors:
            result.update(_decoded_errors(model, to_decode, device))
            result["decoded_windows"] = decodable
    model.train(was_training)
    return result


def _decoded_errors(model, to_decode: dict[tuple[str, str], list[tuple[Any, str, str]]], device) -> dict[str, Any]:
    """``error_rates``: per group its measure, edits, reference units (words, characters or mixed units), windows and
    rate; ``error_rate``: all edits over all units (each group counted in its own units)."""
    import torch
    import whisper

    from pipeline.eval.metrics import error_measure, errors_of
    from pipeline.eval.splits import CODE_SWITCHED

    groups: dict[str, dict[str, Any]] = {}
    for (language, task), items in sorted(to_decode.items()):
        options = whisper.DecodingOptions(language=language, task=task, without_timestamps=True, fp16=device.type == "cuda")
        for start in range(0, len(items), 16):
            chunk = items[start : start + 16]
            decoded = whisper.decode(model, torch.stack([m for m, _, _ in chunk]), options)
            for (_, reference, group), hypothesis in zip(chunk, decoded):
                name = group if task != "translate" else f"{language}->en"
                measure = error_measure(language, group == CODE_SWITCHED, task)
                e, n = errors_of(reference, hypothesis.text, measure, english=language == "en" or task == "translate")
                entry = groups.setdefault(name, {"measure": measure, "errors": 0, "units": 0, "windows": 0})
                entry["errors"] += e
                entry["units"] += n
                entry["windows"] += 1
    errors, units = sum(g["errors"] for g in groups.values()), sum(g["units"] for g in groups.values())
    return {"error_rate": errors / units if units else None,
            "error_rates": {k: dict(v, rate=v["errors"] / max(v["units"], 1)) for k, v in sorted(groups.items())}}


def brief(figures: dict[str, Any]) -> str:
    if figures["loss"] is None:
        return "no held-out windows"
    rates = ", ".join(f"{group} {v['measure'].upper()} {v['rate']:.1%}" for group, v in (figures.get("error_rates") or {}).items())
    return f"loss {figures['loss']:.4f} over {figures['examples']} windows" + (f"; {rates}" if rates else "")
