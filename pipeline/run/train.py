"""Fine-tuning under Ray Train: the loop each worker runs and the trainer that starts the workers.

Each worker (one per GPU, or CPU processes) reads its split of a streaming Ray Data dataset of built examples
(``mel`` bytes, ``tokens``, ``loss_start``) and trains with ``pipeline.whisper.finetune.FineTuner`` (AdamW, warmup
and decay, clipping, accumulation, mixed precision on GPU), under DDP when there are several. Every
``checkpoint_every`` steps rank 0 reports a checkpoint; a restarted run resumes from the newest one with the same
data order: epoch ``e`` is shuffled with seed ``seed + e`` and the micro-batches already consumed are skipped.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import faults
from pipeline.whisper.finetune import FineTuner, TrainOptions, brief

log = logging.getLogger("wspsr")


class TrainingFailed(RuntimeError):
    """Ray Train gave up (a worker failed more often than ``max_failures``); the message is the root cause."""


@dataclass(frozen=True)
class LoopConfig:
    """What every worker's loop needs (Ray Train hands it over as ``train_loop_config``)."""

    options: TrainOptions
    model: str  # name or path, resolved offline in each worker
    threads: int = 0  # torch threads of a CPU worker; 0: the node's cores / workers
    has_eval: bool = False


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train calls this in every worker."""
    import ray.train
    import ray.train.torch

    loop: LoopConfig = config["loop"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    _set_threads(device, loop.threads, world)
    tuner = FineTuner(loop.model, loop.options, device)
    _restore(tuner, rank)
    if world > 1:
        tuner.distribute(lambda model: ray.train.torch.prepare_model(model, move_to_device=False))
    eval_data = ray.train.get_dataset_shard("eval") if loop.has_eval else None

    def held_out(when: str) -> None:
        batches = eval_data.iter_batches(batch_size=loop.options.batch_size, batch_format="numpy") if eval_data is not None else []
        tuner.state.evals.append(dict(tuner.evaluate(batches, with_errors=True), when=when))
        log.info("held-out %s training (step %d): %s", when, tuner.state.step, brief(tuner.state.evals[-1]))

    if rank == 0 and tuner.state.step == 0 and not tuner.state.evals:
        held_out(when="before")
    _epochs(tuner, ray.train.get_dataset_shard("train"), rank, held_out)


def _set_threads(device, threads: int, world: int) -> None:
    if device.type == "cpu":  # Ray leaves a 1-CPU worker one thread; the data tasks beside it need little
        import torch

        from pipeline.whisper.engines import cpu_threads

        torch.set_num_threads(threads or max(1, cpu_threads() // world))


def _restore(tuner: FineTuner, rank: int) -> None:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as folder:
        tuner.restore(Path(folder))
    state = tuner.state
    log.info("worker %d: resuming at step %d (epoch %d, %d batches into it)", rank, state.step, state.epoch, state.batches_in_epoch)


def _epochs(tuner: FineTuner, train_data, rank: int, held_out) -> None:
    """Epochs until ``steps``: evaluations, checkpoints and the step's fault point after each optimizer step."""
    options, state = tuner.options, tuner.state
    started = time.monotonic() - state.seconds
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
            if not tuner.micro_step(batch, index):
                continue
            state.seconds = time.monotonic() - started
            if rank == 0 and (state.step % 10 == 0 or state.step == options.steps):
                log.info("step %d/%d: loss %.4f, lr %.2e, %.1f examples/s", state.step, options.steps, state.train_loss[-1],
                         state.learning_rate[-1], state.examples / max(state.seconds, 1e-9))
            done = state.step >= options.steps
            if rank == 0 and not done and options.eval_every and state.step % options.eval_every == 0:
                held_out(when="during")
            if done or state.step % options.checkpoint_every == 0:
                if done and rank == 0:
                    held_out(when="after")
                _report(tuner, rank, final=done)
            faults.inject(f"train:step-{state.step}")
            if done:
                return
        if not seen_any:
            raise RuntimeError("the training split is empty: no examples to train on")
        state.epoch += 1
        state.batches_in_epoch = 0


def _report(tuner: FineTuner, rank: int, final: bool) -> None:
    import ray.train

    state = tuner.state
    metrics = {"step": state.step, "epoch": state.epoch, "train_loss": state.train_loss[-1] if state.train_loss else math.nan,
               "state": asdict(state)}
    with tempfile.TemporaryDirectory(prefix="wspsr-ckpt-") as folder:
        if rank == 0:
            tuner.save(Path(folder), final=final)
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
    """Run Ray Train; a rerun with the same ``storage`` resumes from its newest checkpoint. Returns the Result;
    raises ``TrainingFailed`` when the workers could not finish."""
    import ray.train
    from ray.train.torch import TorchTrainer

    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True  # the same data order in every run: what makes a resumed run match
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": LoopConfig(options, model, threads, eval_dataset is not None)},
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
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise TrainingFailed(_root_cause(exc)) from exc


def _root_cause(exc: BaseException) -> str:
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return lines[-1] if lines else type(cause).__name__
