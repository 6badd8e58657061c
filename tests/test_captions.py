import codecs

import pytest

from pipeline.io.transcripts import Cue, TranscriptError, decode_text, parse_transcript, read_transcript
from pipeline.schema import RejectReason

SRT = """1
00:00:01,000 --> 00:00:02,500
Hello <i>there</i>,
General Kenobi!

2
00:00:03,000 --> 00:00:04,000 X1:100 X2:200
{\\an8}Second &amp; last."""

VTT_HOURLESS = """WEBVTT
Kind: captions

NOTE this is a comment
spanning lines

STYLE
::cue { color: red }

intro
00:01.000 --> 00:02.500 align:start position:10%
<v Roger>Hello</v> <c.yellow>world</c><00:00:02.000>!

00:01:03.000 --> 00:01:04.250
Over a minute."""


def test_srt_tags_entities_settings_and_no_trailing_blank_line():
    t = parse_transcript(SRT, "srt")
    assert t.cues == (Cue(1000, 2500, "Hello there, General Kenobi!"), Cue(3000, 4000, "Second & last."))
    assert t.text == "Hello there, General Kenobi! Second & last."


def test_vtt_without_hours_notes_styles_and_tags():
    t = parse_transcript(VTT_HOURLESS, "vtt")
    assert t.cues == (Cue(1000, 2500, "Hello world!"), Cue(63000, 64250, "Over a minute."))


def test_vtt_with_hours_and_crlf():
    text = "WEBVTT\r\n\r\n00:00:00.500 --> 00:00:01.000\r\nA.\r\n\r\n01:00:00.000 --> 01:00:01.000\r\nB."
    t = parse_transcript(decode_text(text.encode()), "vtt")
    assert [(c.start_ms, c.end_ms) for c in t.cues] == [(500, 1000), (3600000, 3601000)]


def test_vtt_must_start_with_header():
    with pytest.raises(TranscriptError) as err:
        parse_transcript("00:01.000 --> 00:02.000\nHi", "vtt")
    assert err.value.reason is RejectReason.BAD_TRANSCRIPT_FORMAT


def test_whisper_json_with_bad_segments_counted():
    doc = '{"language": "de", "segments": [{"start": 0.0, "end": 1.5, "text": " Hallo."}, {"start": NaN, "end": 2, "text": "x"}, {"end": 3}]}'
    t = parse_transcript(doc, "json")
    assert t.cues == (Cue(0, 1500, "Hallo."),)
    assert t.invalid_cues == 2 and t.language == "de"


def test_whisper_json_text_only_is_untimed():
    t = parse_transcript('{"text": " Just text. "}', "json")
    assert t.cues is None and t.text == "Just text."


@pytest.mark.parametrize(
    "text, fmt, reason",
    [
        ("", "txt", RejectReason.EMPTY_TRANSCRIPT),
        ("  \n\t ", "txt", RejectReason.EMPTY_TRANSCRIPT),
        ("1\n00:00:01,000 --> 00:00:02,000\n\n", "srt", RejectReason.EMPTY_TRANSCRIPT),
        ("{not json", "json", RejectReason.BAD_TRANSCRIPT_FORMAT),
        ('{"segments": 3}', "json", RejectReason.BAD_TRANSCRIPT_FORMAT),
        ("1\n00:00:01 --> garbage\nHello", "srt", RejectReason.BAD_TRANSCRIPT_FORMAT),
    ],
)
def test_unusable_transcripts(text, fmt, reason):
    with pytest.raises(TranscriptError) as err:
        parse_transcript(text, fmt)
    assert err.value.reason is reason


@pytest.mark.parametrize(
    "data, expected",
    [
        (codecs.BOM_UTF8 + "Grüße".encode(), "Grüße"),
        (codecs.BOM_UTF16_LE + "Grüße\r\n".encode("utf-16-le"), "Grüße\n"),
        (codecs.BOM_UTF16_BE + "你好".encode("utf-16-be"), "你好"),
        ("plain ascii".encode(), "plain ascii"),
    ],
)
def test_certain_encodings_decode(data, expected):
    assert decode_text(data) == expected


@pytest.mark.parametrize("data", ["Grüße".encode("latin-1"), b"\xff\xfe\xff", "hi".encode("utf-16-le"), b"\x80abc"])
def test_uncertain_encodings_are_refused(data):
    with pytest.raises(TranscriptError) as err:
        decode_text(data)
    assert err.value.reason is RejectReason.BAD_ENCODING


def test_declared_encoding_is_used():
    assert decode_text("Grüße".encode("latin-1"), "latin-1") == "Grüße"


def test_read_transcript_limits_and_missing(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("word " * 1000)
    with pytest.raises(TranscriptError) as err:
        read_transcript(big, max_bytes=100)
    assert err.value.reason is RejectReason.TRANSCRIPT_TOO_LARGE
    with pytest.raises(TranscriptError) as err:
        read_transcript(tmp_path / "absent.srt", max_bytes=100)
    assert err.value.reason is RejectReason.TRANSCRIPT_UNREADABLE
