"""``wspsr train``: fine-tune Whisper on a wspsr corpus with Ray Train, in Whisper's multitask format.

The corpus Parquet is read as a stream (never whole), split into training and held-out windows by source,
turned into examples by CPU tasks (log-mel + multitask tokens, ``stages/build_training_examples``), and fed to
Ray Train workers (one per GPU with ``--gpu``, else CPU processes; DDP when more than one). Output folder:
``checkpoints/step-NNNNNN/`` (``model.pt`` loads with ``whisper.load_model``; ``trainer_state.pt`` resumes),
``metrics.json`` (held-out loss and WER before and after, the loss curve as numbers), ``loss_curve.png``,
``run.json`` (the config) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import posixpath
import random
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.io import lifecycle
from pipeline.io.commit import OutputError, committed_files, write_json_atomically
from pipeline.io.storage import Store, atomic_file
from pipeline.config import ConfigError, to_plain, to_toml
from pipeline.jobargs import JobFailed, add_common_arguments, output_fingerprint, resolve_config, releases_folders, run_job
from pipeline.run.runner import Plan, RayOptions
from pipeline.eval.splits import group_of, select_split, threshold_of_positions, window_positions
from pipeline.stage import Stage
from pipeline.io.storage import is_uri
from pipeline.run.train import TrainingFailed, fit
from pipeline.whisper.finetune import MODEL_FILE, TrainOptions, load_trainer_state
from stages.build_training_examples import ExampleOptions, build_training_examples
from stages.sample_windows import SamplingOptions, WindowRates, sample_windows, sampling_rates, target_shares

log = logging.getLogger("wspsr")

CORPUS_COLUMNS = ["segment_id", "source_id", "audio", "text", "text_timestamped", "prev_text", "language", "task", "has_speech", "code_switched"]
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class DataOptions:
    held_out_fraction: float = 0.1  # of the sources (at least one, never all)
    split_seed: int = 0  # which sources are held out
    file_seed: int = 0  # order in which the corpus files are read
    max_windows: int = 0  # read only the first N windows (smoke tests, overfitting checks); 0: all
    cache_examples: bool = False  # build the examples once and keep them in Ray's object store (spilled to disk
    # when large) instead of rebuilding them each epoch: for small corpora trained for many epochs

    def __post_init__(self) -> None:
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ValueError("held_out_fraction must be in [0, 1)")
        if self.max_windows < 0:
            raise ValueError("max_windows must not be negative")


@dataclass(frozen=True)
class TrainRayOptions(RayOptions):
    workers: int = 1  # Ray Train workers: one per GPU, or CPU processes
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0  # reserved for each worker (data tasks use the rest)
    threads_per_worker: int = 0  # torch threads of a CPU worker; 0: the node's cores / workers
    preserve_order: bool = True  # the same data order in every run: what makes a resumed run match
    dashboard: bool = True  # Ray Train V2 watches its controller through the state API, which needs the dashboard

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.workers < 1 or self.cpus_per_worker <= 0:
            raise ValueError("workers must be at least 1 and cpus_per_worker positive")


SECTIONS: dict[str, type] = {"data": DataOptions, "sampling": SamplingOptions, "examples": ExampleOptions, "train": TrainOptions, "ray": TrainRayOptions}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wspsr train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="a wspsr corpus output folder (its committed corpus/ shards are read)")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, metrics.json, loss_curve.png)")
    parser.add_argument("--model", default="base", help="start from: a name, a .pt or CTranslate2 path, or tiny-random (default: base)")
    parser.add_argument("--workers", type=int, help="Ray Train workers (default 1)")
    parser.add_argument("--gpu", action="store_true", default=None, help="one GPU per worker, mixed precision")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 100)")
    parser.add_argument("--batch-size", type=int, help="examples per worker per micro-batch (default 8)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 1e-5)")
    parser.add_argument("--lora-rank", type=int, metavar="R", help="train LoRA adapters of rank R (peft) instead of every weight; "
                        "alpha, dropout and targets are [train] lora_* options (default 0: full fine-tuning)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    add_common_arguments(parser, "train", reject_fraction=False)
    return parser.parse_args(argv)


def model_dims(spec: str) -> dict[str, int]:
    from pipeline.whisper.models import prepare_model, tiny_random_whisper

    ref = prepare_model(spec, "openai-whisper")  # on the driver: the workers load the converted file
    if ref.checkpoint is not None:
        import torch

        return dict(torch.load(ref.checkpoint, map_location="cpu", weights_only=True, mmap=True)["dims"])
    import dataclasses

    return dataclasses.asdict(tiny_random_whisper(shape=ref.spec).dims)


def prepare_output(out: Path, run_doc: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """The output folder's lifecycle (``pipeline.io.lifecycle``): a folder of something else is refused untouched, a
    second run at once too; ``--overwrite`` removes only what a training run writes there."""
    store = Store(out)
    previous = lifecycle.claim(store, "train")
    if previous is not None:
        if overwrite:
            lifecycle.remove_owned(store, (CHECKPOINTS, "metrics.json", "summary.json", "loss_curve.png", "run.json"))
        elif not resume:
            raise OutputError(f"{out} holds a training run: pass --resume to continue it or --overwrite to start over")
        elif previous.get("fingerprint") != run_doc["fingerprint"]:
            raise OutputError(
                f"{out} was trained with another config or corpus ({previous.get('fingerprint')}); --resume needs the same "
                "ones (the data order depends on them); use --overwrite or another --out"
            )
    elif resume:
        raise OutputError(f"{out} holds no training run (no run.json): nothing to resume")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out / "run.json", run_doc)


@releases_folders
def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config = resolve_config(
        args,
        SECTIONS,
        {"train.steps": args.steps, "train.batch_size": args.batch_size, "train.lr": args.lr, "train.lora_rank": args.lora_rank,
         "ray.workers": args.workers, "ray.use_gpu": args.gpu},
    )
    dims = model_dims(args.model)
    config["examples"] = replace(config["examples"], n_mels=dims["n_mels"], n_vocab=dims["n_vocab"], n_text_ctx=dims["n_text_ctx"])
    if args.print_config:
        print(to_toml(to_plain(config)))
        return {}
    corpus = args.corpus if is_uri(args.corpus) else str(Path(args.corpus).resolve())  # a folder or a URI (s3://...)
    files = committed_files(corpus, "corpus")
    if not files:
        raise ConfigError(f"{corpus} has no committed corpus shards (did the corpus job keep any window?)")
    if is_uri(args.out):
        raise ConfigError(f"--out {args.out}: checkpoints go to a local folder (on a cluster, a shared filesystem every worker mounts)")
    out = Path(args.out).resolve()
    fingerprint = output_fingerprint(config, [f"corpus:{corpus}", f"model:{args.model}", *(posixpath.basename(f) for f in files)])
    prepare_output(out, {"job": "train", "fingerprint": fingerprint, "corpus": corpus, "model": args.model,
                         "config": to_plain(config)}, args.resume, args.overwrite)
    started = time.monotonic()

    data = config["data"]
    ordered = list(files)
    random.Random(data.file_seed).shuffle(ordered)
    positions, groups, group_names = read_windows(ordered, data.max_windows, data.split_seed)
    threshold = threshold_of_positions(positions, data.held_out_fraction)
    natural = group_counts(groups, group_names, positions >= threshold)
    sampling = config["sampling"]
    rates = sampling_rates(natural, sampling)

    plan = Plan(config["ray"])
    corpus_rows = plan.read_parquet(ordered, CORPUS_COLUMNS)
    if data.max_windows:
        corpus_rows = plan.limit(corpus_rows, data.max_windows)
    examples = config["examples"]
    train_rows = plan.map(corpus_rows, select_split, threshold, data.split_seed, False)
    if not sampling.is_natural:  # windows repeated or left out by their group's rate
        train_rows = plan.map(train_rows, sample_windows, WindowRates(tuple(rates), tuple(rates.values()), sampling.seed))
    train_ds = plan.apply(train_rows, [Stage("build_training_examples", build_training_examples, examples)])
    held_out = replace(examples, prompt_probability=0.0, timestamp_probability=0.0)  # comparable loss: text only
    eval_ds = plan.apply(
        plan.map(corpus_rows, select_split, threshold, data.split_seed, True),
        [Stage("build_training_examples", build_training_examples, held_out)],
    ) if threshold > 0 else None
    if data.cache_examples:
        train_ds = plan.materialize(train_ds)
        eval_ds = plan.materialize(eval_ds) if eval_ds is not None else None
    split = split_counts(positions, threshold)
    log.info("training on %s (%d files, %d windows, %d sources; %d held out)", corpus, len(files), len(positions),
             split["train_sources"] + split["held_out_sources"], split["held_out_sources"])

    ray_options = config["ray"]
    try:
        result = fit(train_ds, eval_ds, args.model, config["train"], out / CHECKPOINTS, ray_options.workers, ray_options.use_gpu,
                     ray_options.cpus_per_worker, ray_options.threads_per_worker)
    except TrainingFailed as exc:
        raise JobFailed(f"training failed: {exc}\nrerun the same command with --resume to continue from the newest checkpoint") from exc
    if result.checkpoint is None:
        raise JobFailed("training ended without a checkpoint")
    with result.checkpoint.as_directory() as folder:  # (a resumed run with nothing left to do reports no metrics)
        state = load_trainer_state(Path(folder))["state"]
    checkpoint = Path(result.checkpoint.path) / MODEL_FILE
    metrics = training_metrics(state, config, args.model, corpus, checkpoint, split)
    metrics["sampling"] = {"natural": natural, "target_shares": {g: round(v, 4) for g, v in target_shares(natural, sampling).items()},
                           "rates": {g: round(v, 4) for g, v in rates.items()}, "realised": state.get("mix", {})}
    write_json_atomically(out / "metrics.json", metrics)
    plot_loss_curve(metrics, out / "loss_curve.png")
    summary = {
        "job": "train", "output": str(out), "checkpoint": str(checkpoint), "steps": state["step"], "method": metrics["method"],
        "parameters": metrics["parameters"],
        "held_out": {k: metrics["eval"].get(k) for k in ("before", "after")}, "elapsed_s": round(time.monotonic() - started, 1),
        "accounting": {"ok": True},
    }
    write_json_atomically(out / "summary.json", summary)
    return summary


def read_windows(files: list[str], max_windows: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The source position and the group (language, or code_switched) of every window to train on, file by file
    (three small columns read): 8 bytes and a 4-byte group code a window, and the group names."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts, codes, names, left = [], [], {}, max_windows or None
    for file in files:
        if left is not None and left <= 0:
            break
        table = pq.read_table(file, columns=["source_id", "language", "code_switched"])
        if left is not None:
            table = table.slice(0, left)
            left -= table.num_rows
        parts.append(window_positions(table["source_id"], seed))
        encoded = pc.dictionary_encode(group_of(table["language"], table["code_switched"]))
        encoded = encoded.combine_chunks() if isinstance(encoded, pa.ChunkedArray) else encoded
        local = np.array([names.setdefault(name, len(names)) for name in encoded.dictionary.to_pylist()], dtype=np.int32)
        codes.append(local[encoded.indices.to_numpy(zero_copy_only=False)] if len(local) else np.zeros(0, np.int32))
    if not parts:
        return np.zeros(0), np.zeros(0, np.int32), []
    return np.concatenate(parts), np.concatenate(codes), list(names)


def group_counts(codes: np.ndarray, names: list[str], training: np.ndarray) -> dict[str, int]:
    """Windows of the training split per group."""
    counts = np.bincount(codes[training], minlength=len(names))
    return {name: int(n) for name, n in sorted(zip(names, counts.tolist())) if n}


def split_counts(positions: np.ndarray, threshold: float) -> dict[str, int]:
    held, sources = positions < threshold, np.unique(positions)
    return {"train_sources": int((sources >= threshold).sum()), "held_out_sources": int((sources < threshold).sum()),
            "train_windows": int((~held).sum()), "held_out_windows": int(held.sum())}


def training_metrics(state: dict[str, Any], config: dict[str, Any], model: str, corpus: str, checkpoint: Path,
                     split: dict[str, int]) -> dict[str, Any]:
    evals, train = state["evals"], config["train"]
    parameters = state.get("parameters") or {}
    return {
        "model": model,
        "corpus": corpus,
        "checkpoint": str(checkpoint),
        "method": "lora" if train.lora_rank else "full",
        "parameters": dict(parameters, trainable_fraction=round(parameters["trainable"] / parameters["total"], 6)) if parameters else {},
        "frozen_encoder": train.freeze_encoder,
        "steps": state["step"],
        "epochs_started": state["epoch"] + 1,
        "examples_seen": state["examples"],
        "skipped_examples": state.get("skipped", {}),
        "seconds": round(state["seconds"], 1),
        "examples_per_second": round(state["examples"] / max(state["seconds"], 1e-9), 3),
        "split": split,
        "eval": {
            "before": next((e for e in evals if e["when"] == "before"), None),
            "after": next((e for e in reversed(evals) if e["when"] == "after"), None),
            "during": [e for e in evals if e["when"] == "during"],
        },
        "train_loss": state["train_loss"],
        "learning_rate": state["learning_rate"],
        "config": to_plain(config),
    }


def plot_loss_curve(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    steps = range(1, len(metrics["train_loss"]) + 1)
    axis.plot(steps, metrics["train_loss"], label="training loss (per step)", linewidth=1)
    points = [e for e in (metrics["eval"]["before"], *metrics["eval"]["during"], metrics["eval"]["after"]) if e and e["loss"] is not None]
    if points:
        axis.plot([e["step"] for e in points], [e["loss"] for e in points], "o-", label="held-out loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("cross-entropy per token")
    axis.set_title(f"wspsr train: {metrics['model']}" + (" (LoRA)" if metrics.get("method") == "lora" else ""))
    axis.grid(alpha=0.3)
    handles, labels = axis.get_legend_handles_labels()
    groups = sorted({g for e in points for g in (e.get("error_rates") or {})})
    if groups:  # error rates on their own axis: each group in its measure (WER, CER, MER)
        rates = axis.twinx()
        for group in groups:
            marks = [(e["step"], e["error_rates"][group]) for e in points if group in (e.get("error_rates") or {})]
            rates.plot([s for s, _ in marks], [100 * v["rate"] for _, v in marks], "s--", linewidth=1,
                       label=f"{group} {marks[0][1]['measure'].upper()}")
        rates.set_ylabel("held-out error rate (%)")
        more_handles, more_labels = rates.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axis.legend(handles, labels, fontsize="small")
    figure.tight_layout()
    with atomic_file(path) as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\nwspsr train: {summary['output']}")
    print(f"  steps: {summary['steps']}; checkpoint: {summary['checkpoint']}")
    parameters = summary.get("parameters") or {}
    if parameters:
        print(f"  {summary.get('method', 'full')} fine-tuning: {parameters['trainable']:,} of {parameters['total']:,} parameters trained "
              f"({parameters['trainable_fraction']:.2%})")
    for when in ("before", "after"):
        figures = summary["held_out"].get(when)
        if figures and figures["loss"] is not None:
            rates = ", ".join(f"{group} {v['measure'].upper()} {v['rate']:.1%}" for group, v in (figures.get("error_rates") or {}).items())
            print(f"  held-out {when}: loss {figures['loss']:.4f} ({figures['examples']} windows){'; ' + rates if rates else ''}")


def main(argv: list[str] | None = None) -> int:
    return run_job("train", run, print_summary, argv)


if __name__ == "__main__":
    sys.exit(main())
