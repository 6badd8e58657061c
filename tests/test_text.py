"""pipeline.text: the one definition of scripts, casing, normalisation and repetition that every stage uses."""

from __future__ import annotations

import pytest

from pipeline import text


@pytest.mark.parametrize(
    "sample, spaceless",
    [
        ("今天天气很好，我们一起去公园散步吧。", True),
        ("我昨天下载了一个新的app，但是wifi一直连不上。", True),  # loanwords do not make it a spaced script
        ("東京でNASAの会議がありました。", True),
        ("วันนี้อากาศดีมาก เราไปเดินเล่นที่สวน", True),
        ("오늘은 날씨가 좋아서 공원에 갔습니다.", False),  # Korean separates words with spaces
        ("We said 你好 and left.", False),
        ("", False),
    ],
)
def test_spaceless_scripts(sample, spaceless):
    assert text.is_spaceless(sample) is spaceless
    assert text.profile(sample).spaceless is spaceless  # the transcript rules see the same answer


@pytest.mark.parametrize(
    "sample, casing",
    [
        ("Hello there, world.", "mixed"),
        ("hello there, world.", "lower"),
        ("HELLO THERE, WORLD.", "upper"),
        ("今天天气很好。", "uncased"),
        ("我昨天下载了一个新的app，但是wifi一直连不上，可能是有bug吧。", "uncased"),  # mostly uncased letters
        ("this is english with one word of 中文 in it, and it is all lower case.", "lower"),
        ("12345 !!!", "uncased"),
    ],
)
def test_casing_classes(sample, casing):
    assert text.casing_class(sample) == casing


def test_compression_ratio_is_whispers():
    """The one threshold (2.4) means the same in decoding and in the transcript filters: Whisper's own measure."""
    from whisper.utils import compression_ratio

    for sample in ("Thank you for watching. " * 12, "A plain human sentence, with a comma.", "好的" * 40):
        assert text.compression_ratio(sample) == pytest.approx(compression_ratio(sample))
    assert text.max_chunk_compression_ratio("Thank you. " * 200) > 2.4
    assert text.max_chunk_compression_ratio("") == 0.0


def test_repetition_counts_words_or_characters():
    assert text.repeated_ngram_share("one two three four five six seven eight", spaceless=False) == 0.0
    assert text.repeated_ngram_share("a b c d " * 10, spaceless=False) > 0.8
    assert text.repeated_ngram_share("好的好的好的好的好的好的好的好的", spaceless=True) > 0.5
    counts = text.ngram_counts(text.repetition_units("The the THE the", spaceless=False), 1)
    assert counts == {("the",): 4}  # case folded


def test_join_and_leading_space():
    assert text.join_texts(["你好。", "世界。", "Hello", "world."]) == "你好。世界。 Hello world."
    assert text.leading_space("Hello") == " " and text.leading_space("你好") == "" and text.leading_space("안녕") == " "


def test_normalize_for_comparison():
    assert text.normalize_for_comparison("Don't  STOP — well-known!") == "dont stop well known"
    assert text.normalize_for_comparison("ＡＢＣ，１２３") == "abc 123"
