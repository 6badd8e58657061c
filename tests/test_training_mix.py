"""What training on a multilingual, code-switched corpus needs besides the loop: error rates that fit the language
(WER, CER, MER) and a training mix by language and subset. Plain functions, no Ray."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.eval.metrics import CER, MER, WER, error_measure, errors_of, mixed_errors, mixed_units
from stages.sample_windows import SamplingOptions, WindowRates, sample_windows, sampling_rates, target_shares


def test_the_measure_fits_the_speech():
    assert error_measure("en") == WER and error_measure("de") == WER
    assert error_measure("zh") == CER and error_measure("ja") == CER and error_measure("th") == CER
    assert error_measure("zh", code_switched=True) == MER and error_measure("en", code_switched=True) == MER
    assert error_measure("zh", task="translate") == WER  # X->en: the text is English


def test_mixed_error_rate_counts_chinese_characters_and_english_words():
    """MER's units: each Chinese character, each English word, after Whisper's basic normaliser (case, punctuation)."""
    reference = "我们明天用 Python 写一个 demo, OK?"
    assert mixed_units(reference) == ["我", "们", "明", "天", "用", "python", "写", "一", "个", "demo", "ok"]
    assert mixed_errors(reference, "我们明天用python写一个Demo OK") == (0, 11)
    # one English word wrong and one character wrong: 2 of 11 units; WER over whitespace words would call the
    # whole Chinese run one wrong word, CER would count the English word's letters one by one
    assert mixed_errors(reference, "我们今天用 Java 写一个 demo OK") == (2, 11)
    assert errors_of(reference, "我们今天用 Java 写一个 demo OK", MER, english=False) == (2, 11)
    assert errors_of("今天天气很好。", "今天天气不好", CER, english=False) == (1, 6)


def test_temperature_flattens_the_mix_and_weights_set_it():
    natural = {"en": 800, "zh": 150, "code_switched": 50}
    assert target_shares(natural, SamplingOptions()) == pytest.approx({"en": 0.8, "zh": 0.15, "code_switched": 0.05})
    flat = target_shares(natural, SamplingOptions(temperature=5.0))
    assert flat["en"] < 0.5 and flat["code_switched"] > 0.15 and sum(flat.values()) == pytest.approx(1.0)
    chosen = target_shares(natural, SamplingOptions(weights=("code_switched=0.5", "zh=0.3")))
    assert chosen == pytest.approx({"code_switched": 0.5, "zh": 0.3, "en": 0.2})
    rates = sampling_rates(natural, SamplingOptions(weights=("code_switched=0.5", "zh=0.3")))
    assert rates == pytest.approx({"code_switched": 10.0, "zh": 2.0, "en": 0.25})  # the total stays 1000 windows
    with pytest.raises(ValueError, match="at most 1"):
        SamplingOptions(weights=("en=0.8", "zh=0.5"))
    with pytest.raises(ValueError, match="GROUP=SHARE"):
        SamplingOptions(weights=("en",))


def test_windows_are_repeated_and_left_out_by_their_group_deterministically():
    rows = [{"segment_id": f"s{i:05d}", "language": "en" if i < 800 else "zh", "code_switched": 900 <= i < 950} for i in range(1000)]
    batch = pa.Table.from_pylist(rows)
    rates = sampling_rates({"en": 800, "zh": 150, "code_switched": 50}, SamplingOptions(weights=("code_switched=0.5", "zh=0.3")))
    options = WindowRates(tuple(rates), tuple(rates.values()), seed=0)
    out = sample_windows(batch, options)
    assert out.equals(sample_windows(batch, options))  # the same rows on every run
    kept = out.to_pylist()
    switched = sum(r["code_switched"] for r in kept)
    assert switched == 500  # rate 10: every code-switched window ten times
    zh = sum(r["language"] == "zh" and not r["code_switched"] for r in kept)
    assert zh == 300  # rate 2
    assert 150 <= sum(r["language"] == "en" for r in kept) <= 250  # rate 0.25 of 800, by hash
