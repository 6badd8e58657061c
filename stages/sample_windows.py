"""Training mix by language and subset: how often each window is trained on, so that a user can flatten a corpus
dominated by one language (temperature sampling, as multilingual training does) or set the shares outright (mix
monolingual Chinese and English back in with code-switched speech, so the model keeps its languages).

A window's group is ``code_switched`` when its source switches language, else its language. ``sampling_rates``
turns the training split's natural counts per group into a rate per group (expected copies of each window, the
total kept about equal); ``sample_windows`` applies them per batch, deterministically by segment id: a rate of 2.5
trains each window twice and half of them a third time, a rate of 0.2 keeps one in five.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.eval.splits import group_of


@dataclass(frozen=True)
class SamplingOptions:
    # Groups drawn in proportion to (natural share)^(1/temperature): 1 keeps the corpus's mix, 5 is close to
    # uniform over groups (multilingual Whisper-style training uses such temperatures).
    temperature: float = 1.0
    # Explicit shares "GROUP=SHARE" (a language code, or code_switched), e.g. ["code_switched=0.6", "zh=0.3",
    # "en=0.1"]: each named group gets that share of the training windows; groups not named share what is left in
    # proportion to their temperature-weighted shares. The shares may sum to at most 1.
    weights: tuple[str, ...] = ()
    seed: int = 0  # which windows are repeated or left out

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        total = sum(self.shares.values())
        if total > 1.0 + 1e-9:
            raise ValueError(f"weights sum to {total:g}: they are shares of the training windows, at most 1 together")

    @property
    def shares(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for item in self.weights:
            group, sep, value = item.partition("=")
            try:
                share = float(value)
            except ValueError:
                share = -1.0
            if not sep or not group.strip() or share < 0:
                raise ValueError(f"weights: {item!r} must look like GROUP=SHARE (a language code or code_switched, a share >= 0)")
            found[group.strip()] = share
        return found

    @property
    def is_natural(self) -> bool:
        return self.temperature == 1.0 and not self.weights


def target_shares(natural: dict[str, int], options: SamplingOptions) -> dict[str, float]:
    """The share of training windows each group should have."""
    total = sum(natural.values())
    if not total:
        return {}
    tempered = {g: (n / total) ** (1.0 / options.temperature) for g, n in natural.items() if n}
    named = {g: s for g, s in options.shares.items() if g in natural and natural[g]}
    rest = 1.0 - sum(named.values())
    free = {g: w for g, w in tempered.items() if g not in named}
    norm = sum(free.values())
    shares = {g: (rest * w / norm if norm else 0.0) for g, w in free.items()}
    if not free and named:  # every group named: their shares are the mix, whatever they sum to
        scale = sum(named.values())
        return {g: s / scale for g, s in named.items()} if scale else {}
    shares.update(named)
    return shares


def sampling_rates(natural: dict[str, int], options: SamplingOptions) -> dict[str, float]:
    """Expected copies of each window per group, so that the groups take their target shares and the number of
    training windows stays about the same."""
    total = sum(natural.values())
    return {g: (share * total / natural[g]) if natural.get(g) else 0.0 for g, share in target_shares(natural, options).items()}


@dataclass(frozen=True)
class WindowRates:
    """``sample_windows``' options: a rate per group (groups not listed keep rate 1) and the seed."""

    groups: tuple[str, ...]
    rates: tuple[float, ...]
    seed: int = 0


def _unit(segment_ids: list[str], seed: int) -> np.ndarray:
    """A number in [0, 1) per segment id, the same on every run."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{s}".encode(), digest_size=8).digest(), "little") / 2**64 for s in segment_ids])


def sample_windows(batch: pa.Table, rates: WindowRates) -> pa.Table:
    """Corpus rows (``segment_id``, ``language``, ``code_switched``) repeated or left out by their group's rate."""
    if batch.num_rows == 0:
        return batch
    groups = group_of(batch["language"], batch["code_switched"]).to_pylist()
    by_group = dict(zip(rates.groups, rates.rates))
    rate = np.array([by_group.get(g, 1.0) for g in groups])
    whole = np.floor(rate)
    copies = (whole + (_unit(batch["segment_id"].to_pylist(), rates.seed) < rate - whole)).astype(np.int64)
    return batch.take(pa.array(np.repeat(np.arange(batch.num_rows), copies)))
