"""Training Whisper with Ray Train: the loop each worker runs, its checkpoints, and held-out evaluation.

Each worker (one per GPU, or CPU processes) reads its split of a streaming Ray Data dataset of built examples
(``mel`` bytes, ``tokens``, ``loss_start``), trains the openai-whisper model under DDP with AdamW, linear warmup
and decay, gradient clipping and accumulation (mixed precision on GPU), and reports a checkpoint every
``checkpoint_every`` steps. A checkpoint folder holds ``model.pt`` in openai-whisper's format (``whisper.load_model``
reads it) and ``trainer_state.pt`` (optimizer, scheduler, step, position in the epoch, history), so a restarted
run continues with the same data order: epoch ``e`` is shuffled with seed ``seed + e`` and the micro-batches
already consumed are skipped. This module knows nothing of corpus rows: the job passes datasets of examples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pipeline import faults

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


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: TrainState) -> None:
    import torch

    torch.save({"dims": dataclasses.asdict(model.dims), "model_state_dict": model.state_dict()}, folder / MODEL_FILE)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "state": dataclasses.asdict(state),
         "torch_rng": torch.get_rng_state()},
        folder / STATE_FILE,
    )


def load_trainer_state(folder: Path) -> dict[str, Any]:
    import torch

    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)


def _parameter_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def evaluate(model, batches: Iterable[dict[str, Any]], n_mels: int, device, max_decode: int, with_wer: bool) -> dict[str, Any]:
    """Held-out loss over every example and, when asked, WER of greedy decoding over up to ``max_decode`` speech
    windows (grouped by language and task, as Whisper decodes one language per batch)."""
    import torch
    import whisper

    from pipeline.eval.metrics import word_errors

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
            result["wer"] = errors / words if words else None
            result["wer_windows"] = decodable
            result["wer_per_language"] = {k: dict(v, wer=v["errors"] / max(v["words"], 1)) for k, v in per_language.items()}
    model.train(was_training)
    return result


def load_model_for_training(spec: str, device):
    """The openai-whisper module in float32 (mixed precision comes from autocast, not from the weights)."""
    from pipeline.whisper.models import load_openai_whisper, resolve_model

    return load_openai_whisper(resolve_model(spec), device="cpu").float().to(device).train()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train calls this in every worker."""
    import ray.train
    import ray.train.torch
    import torch

    options: TrainOptions = config["options"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":  # Ray leaves a 1-CPU worker one thread; the data tasks beside it need little
        from pipeline.whisper.engines import cpu_threads

        torch.set_num_threads(config.get("threads") or max(1, cpu_threads() // world))
    torch.manual_seed(options.seed)
    model = load_model_for_training(config["model"], device)
    n_mels = model.dims.n_mels
    optimizer = torch.optim.AdamW(
        _parameter_groups(model, options.weight_decay), lr=options.lr, betas=tuple(options.adam_betas), eps=options.adam_eps
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, options.warmup_steps, options.steps))
    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / MODEL_FILE, map_location=device, weights_only=True)
            model.load_state_dict(saved["model_state_dict"])
            trainer = load_trainer_state(Path(folder))
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        state = TrainState(**trainer["state"])
        torch.set_rng_state(trainer["torch_rng"])
        log.info("worker %d: resuming at step %d (epoch %d, %d batches into it)", rank, state.step, state.epoch, state.batches_in_epoch)
    use_amp = options.mixed_precision and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    if world > 1:
        # openai-whisper keeps its alignment heads as a sparse buffer, which DDP cannot broadcast; it is not trained.
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ["alignment_heads"])
    net = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model

    eval_data = ray.train.get_dataset_shard("eval") if config.get("has_eval") else None

    def run_eval(with_wer: bool) -> dict[str, Any]:
        batches = eval_data.iter_batches(batch_size=options.batch_size, batch_format="numpy") if eval_data is not None else []
        figures = evaluate(model, batches, n_mels, device, options.eval_max_examples, with_wer)
        return dict(figures, step=state.step)

    if rank == 0 and state.step == 0 and not state.evals:
        state.evals.append(dict(run_eval(with_wer=True), when="before"))
        log.info("held-out before training: %s", _brief(state.evals[-1]))

    train_data = ray.train.get_dataset_shard("train")
    started = time.monotonic() - state.seconds
    micro, step_loss = 0, 0.0
    while state.step < options.steps:
        seen_any = False
        batches = train_data.iter_batches(
            batch_size=options.batch_size, batch_format="numpy",
            local_shuffle_buffer_size=options.shuffle_buffer or None, local_shuffle_seed=options.seed + state.epoch if options.shuffle_buffer else None,
        )
        for index, batch in enumerate(batches):
            seen_any = True
            if index < state.batches_in_epoch:
                continue  # consumed before the checkpoint this run resumed from
            batch, skipped = usable_examples(batch)
            for reason, count in skipped.items():
                state.skipped[reason] = state.skipped.get(reason, 0) + count
            if not len(batch["tokens"]):  # (with several workers this would desynchronise DDP: rare enough to accept)
                state.batches_in_epoch = index + 1
                continue
            mel, inputs, labels = (t.to(device) for t in collate(batch, n_mels))
            micro += 1
            last_micro = micro % options.grad_accum == 0
            sync = net.no_sync() if world > 1 and not last_micro else contextlib.nullcontext()
            with sync:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss_sum, count = token_loss(net, mel, inputs, labels)
                # Mean over this micro-batch's tokens, averaged over the accumulation.
                scaler.scale(loss_sum / max(count, 1) / options.grad_accum).backward()
            step_loss += float(loss_sum.detach()) / max(count, 1) / options.grad_accum
            state.batches_in_epoch = index + 1
            state.examples += len(labels)
            if not last_micro:
                continue
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            state.learning_rate.append(scheduler.get_last_lr()[0])
            scheduler.step()
            state.step += 1
            state.train_loss.append(step_loss)
            state.seconds = time.monotonic() - started
            step_loss = 0.0
            if rank == 0 and (state.step % 10 == 0 or state.step == options.steps):
                log.info("step %d/%d: loss %.4f, lr %.2e, %.1f examples/s", state.step, options.steps, state.train_loss[-1],
                         state.learning_rate[-1], state.examples / max(state.seconds, 1e-9))
            done = state.step >= options.steps
            if rank == 0 and not done and options.eval_every and state.step % options.eval_every == 0:
                state.evals.append(dict(run_eval(with_wer=False), when="during"))
            if done or state.step % options.checkpoint_every == 0:
                if done and rank == 0:
                    state.evals.append(dict(run_eval(with_wer=True), when="after"))
                    log.info("held-out after training: %s", _brief(state.evals[-1]))
                _report(state, model, optimizer, scheduler, rank)
            faults.inject(f"train:step-{state.step}")
            if done:
                break
        if state.step >= options.steps:
            break
        if not seen_any:
            raise RuntimeError("the training split is empty: no examples to train on")
        state.epoch += 1
        state.batches_in_epoch = 0


def _brief(figures: dict[str, Any]) -> str:
    if figures["loss"] is None:
        return "no held-out windows"
    wer = figures.get("wer")
    return f"loss {figures['loss']:.4f} over {figures['examples']} windows" + (f", WER {wer:.1%}" if wer is not None else "")


def _report(state: TrainState, model, optimizer, scheduler, rank: int) -> None:
    import ray.train

    metrics = {"step": state.step, "epoch": state.epoch, "train_loss": state.train_loss[-1] if state.train_loss else math.nan,
               "state": dataclasses.asdict(state)}
    with tempfile.TemporaryDirectory(prefix="wspsr-ckpt-") as folder:
        if rank == 0:
            save_checkpoint(Path(folder), model, optimizer, scheduler, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder), checkpoint_dir_name=f"step-{state.step:06d}")
        else:
            ray.train.report(metrics)


def fit(
    train_dataset,
    eval_dataset,
    model: str,
    options: TrainOptions,
    storage: Path,
    workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    threads: int = 0,
):
    """Run Ray Train; a rerun with the same ``storage`` resumes from its newest checkpoint. Returns the Result."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True  # the same data order in every run: what makes a resumed run match
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"options": options, "model": model, "threads": threads, "has_eval": eval_dataset is not None},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=storage.name,
            storage_path=str(storage.parent.resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=options.keep_checkpoints or None),
            failure_config=ray.train.FailureConfig(max_failures=options.max_failures),
        ),
        datasets={"train": train_dataset, **({"eval": eval_dataset} if eval_dataset is not None else {})},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=ingest),
    )
    return trainer.fit()
