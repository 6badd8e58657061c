"""The transcript filters, rule by rule: tables of (text, expected reason or keep)."""

from __future__ import annotations


import pytest

from pipeline.schema import table_from_rows
from stages.judge_windows import decide_language
from stages.check_speaking_rate import SpeakingRateOptions, check_speaking_rate
from stages.score_windows import average_probabilities, spread
from stages.detect_machine_generated import MachineGeneratedOptions, judge_transcript
from stages.detect_text_language import detect_text_language, identify
from stages.languages import LanguageOptions
from support.output import reasons_of

LONG_HUMAN = (
    "When I arrived in the city, the rain had stopped. I asked a stranger, an old man with a dog, where the station was; "
    "he laughed and pointed behind me! Had I really walked past it? Apparently so."
)
LOOP = "Thank you for watching. " * 12
ITN_STYLE = (
    "The meeting started at 9 am. The first item was the budget for 2024. Mary presented the numbers for the "
    "third quarter. Sales grew by 12 percent in Europe and 8 percent in Asia. The board asked about costs in the "
    "new factory. John said the factory would open in March. Then the group moved to hiring plans for next year. "
    "They agreed to add 40 engineers and 6 designers. The last topic was the office move. Everyone will work from "
    "the new building after the summer break. Coffee and cake were served in the hall. The meeting ended at 11 am."
)

# A punctuated Mandarin transcript with English loanwords, as people write them (it was rejected all_lowercase).
ZH_WITH_LOANWORDS = "我昨天下载了一个新的app，但是wifi一直连不上，可能是有bug吧。我们的manager说这个feature下周要上线，ok。"

RULE_TABLE = [
    # casing
    ("THIS IS A TRANSCRIPT THAT SOMEBODY TYPED WITH CAPS LOCK ON.", "all_uppercase"),
    ("NASA, the FBI and the CIA met at the UN in NYC on Monday, said the BBC.", None),  # acronym-heavy but human
    ("this transcript has no capital letters at all, though it has commas.", "all_lowercase"),
    ("ok so we went there and then we left", "all_lowercase"),
    ("OK.", None),  # too short to judge
    ("ok", None),
    ("Ёлка стоит в углу комнаты, и все дети ей радуются.", None),
    ("ВСЕ ДЕТИ РАДУЮТСЯ НОВОГОДНЕЙ ЁЛКЕ И ПОДАРКАМ ПОД НЕЙ.", "all_uppercase"),
    # caseless scripts are never judged on casing
    ("今天天气很好，我们一起去公园散步吧。你觉得怎么样？", None),
    ("東京でNASAの会議がありました。とても面白かったです。", None),  # mixed script: too few cased letters
    ("오늘은 날씨가 좋아서 공원에 산책하러 갔습니다. 정말 즐거웠어요!", None),
    ("مرحبا بكم في هذا البرنامج، نتحدث اليوم عن التاريخ والثقافة.", None),
    ("שלום לכולם, היום נדבר על ההיסטוריה של העיר הזאת.", None),
    ("आज मौसम बहुत अच्छा है, चलो पार्क में घूमने चलते हैं।", None),
    ("วันนี้อากาศดีมาก เราไปเดินเล่นที่สวนสาธารณะกันเถอะ", None),
    ("დღეს ძალიან კარგი ამინდია, მოდით პარკში გავისეირნოთ.", None),  # Georgian: letters have case in Unicode, not in use
    # ... nor when a text in such a script carries lower-case loanwords (26 Latin letters, all small)
    (ZH_WITH_LOANWORDS, None),
    ("مرحبا بكم في برنامج اليوم عن الـ software والـ hardware والـ laptop، نتحدث عن التاريخ والثقافة.", None),
    # a text mostly in a cased script is judged even with a few characters of another
    ("this transcript has no capital letters at all, though it has commas and says 你好 once.", "all_lowercase"),
    # punctuation
    ("We walked down to the river and sat on the bank for a while and then we went home because it was getting dark and cold", "missing_punctuation"),
    ("In 1969, 3 astronauts flew 384,400 km to the Moon; 2 of them walked on it for 21.5 hours.", None),  # numbers
    (LONG_HUMAN, None),
    (ITN_STYLE, "rule_based_itn"),
    ("今天天气很好我们一起去公园散步吧你觉得怎么样我觉得非常好我们现在就出发吧", "missing_punctuation"),
    # repetition and markers
    (LOOP, "repetitive_text"),
    ("[Music] [Music] [Applause] ♪ ♪ [Music]", "mostly_non_speech_markers"),
    ("[Music] Welcome back to the show, everyone. Today we talk about gardens and how to keep them alive.", None),
]


@pytest.mark.parametrize("text, expected", RULE_TABLE)
def test_machine_generated_rules(text, expected):
    verdict = judge_transcript({"transcript_text": text}, MachineGeneratedOptions())
    assert (verdict.reason.value if verdict else None) == expected, verdict and verdict.detail


def test_reject_detail_names_the_measured_value():
    verdict = judge_transcript({"transcript_text": RULE_TABLE[0][0]}, MachineGeneratedOptions())
    assert verdict.detail == "100% of 48 cased letters are capitals (limit 90%)"


def test_provenance_comes_first():
    verdict = judge_transcript({"transcript_text": LONG_HUMAN, "transcript_origin": "automatic_captions"}, MachineGeneratedOptions())
    assert verdict.reason.value == "machine_generated_captions"
    assert judge_transcript({"transcript_text": LONG_HUMAN, "transcript_origin": "subtitles"}, MachineGeneratedOptions()) is None


def test_thresholds_are_configurable():
    text = "Mostly CAPS HERE BUT NOT QUITE ALL OF IT, really."
    assert judge_transcript({"transcript_text": text}, MachineGeneratedOptions()) is None
    strict = MachineGeneratedOptions(all_uppercase_share=0.6)
    assert judge_transcript({"transcript_text": text}, strict).reason.value == "all_uppercase"


@pytest.mark.parametrize(
    "text, language",
    [
        ("The quick brown fox jumps over the lazy dog, again and again.", "en"),
        ("Der schnelle braune Fuchs springt über den faulen Hund.", "de"),
        ("今天天气很好，我们一起去公园散步吧。", "zh"),
        ("Быстрая коричневая лиса прыгает через ленивую собаку.", "ru"),
        ("Line one\nline two\r\nthird line of English text here.", "en"),  # newlines flattened
    ],
)
def test_text_language_id(text, language):
    (detected, prob), = identify([text])
    assert detected == language and prob > 0.5


def test_declared_language_stands_when_text_is_unsure():
    rows = [
        {"source_id": "a", "transcript_text": "OK.", "language": "pt-br"},
        {"source_id": "b", "transcript_text": "Der schnelle braune Fuchs springt über den faulen Hund.", "language": "en"},
    ]
    out = detect_text_language(table_from_rows(rows), LanguageOptions(min_text_prob=0.9)).to_pylist()
    assert out[0]["language"] == "pt" and out[0]["transcript_language_prob"] < 0.9
    assert out[1]["language"] == "de" and out[1]["transcript_language"] == "de"


@pytest.mark.parametrize(
    "language, probs, expected",
    [
        ("de", {"de": 0.95, "en": 0.02}, ("transcribe", "de")),
        ("pt", {"es": 0.6, "pt": 0.3, "gl": 0.05}, ("transcribe", "pt")),  # close languages: probability, not top-1
        ("en", {"de": 0.9, "en": 0.05}, ("translate", "de")),  # English transcript of German speech: X->en
        ("en", {"de": 0.4, "nl": 0.3, "en": 0.1}, "language_mismatch"),  # not sure enough for translation
        ("de", {"en": 0.97, "de": 0.01}, "language_mismatch"),  # German transcript of English speech
        (None, {"it": 0.9}, ("transcribe", "it")),
        (None, {"it": 0.3, "es": 0.3}, "language_unknown"),
    ],
)
def test_language_agreement(language, probs, expected):
    verdict = decide_language(language, probs, LanguageOptions())
    if isinstance(expected, str):
        assert verdict.reason.value == expected and "audio:" in verdict.detail
    else:
        assert verdict[::-1] == expected


def test_a_window_cap_spreads_the_scored_windows():
    assert spread(list(range(2, 10)), 3) == [2, 6, 9]
    assert spread([2], 3) == [2]
    assert spread(list(range(10)), 0) == list(range(10))  # 0: every window
    combined = average_probabilities([{"en": 0.1, "es": 0.9}, {"en": 0.9, "es": 0.1}, {"es": 0.8, "en": 0.2}])
    assert max(combined, key=combined.get) == "es" and abs(sum(combined.values()) - 1) < 1e-9


def test_speaking_rate():
    rows = [
        {"source_id": "ok", "transcript_text": "A normal sentence of speech.", "duration_ms": 2_500},
        {"source_id": "fast", "transcript_text": "word " * 200, "duration_ms": 10_000},
        {"source_id": "slow", "transcript_text": "Hi.", "duration_ms": 600_000},
        {"source_id": "short", "transcript_text": "word " * 50, "duration_ms": 1_000},
    ]
    out = check_speaking_rate(table_from_rows(rows), SpeakingRateOptions())
    assert reasons_of(out) == {"ok": None, "fast": "implausible_char_rate", "slow": "implausible_char_rate", "short": None}
