"""Corpus windows -> Whisper training inputs: tokens decode back to the row, mels match openai-whisper's."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.io.media import decode_audio, encode_flac
from pipeline.eval.splits import held_out_threshold, select_split, source_position
from pipeline.whisper.finetune import IGNORE, collate, lr_factor, usable_examples
from stages.build_training_examples import EXAMPLE_SCHEMA, ExampleOptions, build_training_examples, example_tokens, tokenizer_for

from support.data import JFK, JFK_TEXT

ALWAYS = ExampleOptions(prompt_probability=1.0, timestamp_probability=1.0)
NEVER = ExampleOptions(prompt_probability=0.0, timestamp_probability=0.0)
ROW = {
    "segment_id": "s1-w0001",
    "source_id": "s1",
    "language": "de",
    "task": "transcribe",
    "has_speech": True,
    "text": "Guten Morgen. Wie geht es?",
    "text_timestamped": "<|0.00|> Guten Morgen.<|1.84|><|2.20|> Wie geht es?<|3.60|>",
    "prev_text": "Das war gestern.",
}


def test_tokens_with_prompt_and_timestamps_decode_back_to_the_row():
    tok = tokenizer_for(51865)
    tokens, loss_start = example_tokens(ROW, ALWAYS)
    assert tokens[0] == tok.sot_prev
    sot = tokens.index(tok.sot)
    assert loss_start == sot + 1  # no loss on the previous text nor on <|startoftranscript|>
    assert tok.decode(tokens[1:sot]).strip() == ROW["prev_text"]
    assert tokens[sot : sot + 3] == [tok.sot, tok.to_language_token("de"), tok.transcribe]
    assert tok.no_timestamps not in tokens
    assert tokens[-1] == tok.eot
    assert tok.decode_with_timestamps(tokens[sot + 3 : -1]) == ROW["text_timestamped"]


def test_tokens_without_prompt_or_timestamps():
    tok = tokenizer_for(51865)
    tokens, loss_start = example_tokens(ROW, NEVER)
    assert tokens[:4] == [tok.sot, tok.to_language_token("de"), tok.transcribe, tok.no_timestamps]
    assert loss_start == 1
    assert tok.decode(tokens[4:-1]) == " " + ROW["text"]
    assert tokens[-1] == tok.eot and all(t < tok.timestamp_begin for t in tokens[4:-1])


def test_no_speech_translation_and_spaceless_scripts():
    tok = tokenizer_for(51865)
    assert example_tokens(dict(ROW, has_speech=False, text=""), ALWAYS) == ([tok.sot, tok.no_speech, tok.eot], 1)
    tokens, _ = example_tokens(dict(ROW, task="translate", text="Good morning.", text_timestamped=None), ALWAYS)
    assert tokens[tokens.index(tok.sot) + 2] == tok.translate and tok.no_timestamps in tokens
    tokens, _ = example_tokens(dict(ROW, language="zh", text="早上好。", text_timestamped=None, prev_text=None), ALWAYS)
    assert tok.decode(tokens[4:-1]) == "早上好。"  # no leading space in scripts written without spaces


def test_choices_are_stable_and_follow_the_probabilities():
    half = ExampleOptions(prompt_probability=0.5, timestamp_probability=0.25)
    tok = tokenizer_for(51865)
    runs = [[example_tokens(dict(ROW, segment_id=f"s-{i}"), half)[0] for i in range(400)] for _ in range(2)]
    assert runs[0] == runs[1]
    prompted = sum(t[0] == tok.sot_prev for t in runs[0]) / 400
    timed = sum(tok.no_timestamps not in t for t in runs[0]) / 400
    assert 0.4 < prompted < 0.6 and 0.17 < timed < 0.33


def test_long_prompts_are_capped_and_overlong_targets_rejected():
    tok = tokenizer_for(51865)
    tokens, loss_start = example_tokens(dict(ROW, prev_text="word " * 1000), ALWAYS)
    assert loss_start - 2 == 448 // 2 - 1  # prompt tokens after <|startofprev|>, as Whisper caps them
    assert len(tokens) <= 448
    rejected = example_tokens(dict(ROW, text="word " * 600, text_timestamped=None), NEVER)
    assert rejected.reason.value == "too_many_tokens"
    assert rejected is not None and not isinstance(rejected, tuple)
    assert tok.sot  # the tokenizer is the multilingual one


def test_unknown_language_is_rejected():
    assert example_tokens(dict(ROW, language="xx"), NEVER).reason.value == "language_unknown"


def _jfk_row(segment_id: str, **extra) -> dict:
    pcm = decode_audio(JFK)
    row = dict(ROW, segment_id=segment_id, source_id="jfk", language="en", text=JFK_TEXT, text_timestamped=None, prev_text=None,
               audio={"bytes": encode_flac(pcm), "path": None})
    return dict(row, **extra)


def test_build_examples_real_audio_matches_openai_whisper_mel():
    import torch
    import whisper

    batch = pa.Table.from_pylist([_jfk_row("a"), _jfk_row("b", language="xx"), _jfk_row("c", has_speech=False)])
    out = build_training_examples(batch, NEVER)
    assert out.schema == EXAMPLE_SCHEMA and out.num_rows == 3
    rows = out.to_pylist()
    assert rows[1]["reject_reason"] == "language_unknown" and rows[1]["mel"] is None
    mel = np.frombuffer(rows[0]["mel"], dtype="<f4").reshape(80, 3000)
    audio = decode_audio(JFK).astype(np.float32) / 32768
    expected = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio))).numpy()
    assert np.abs(mel - expected).max() < 1e-3  # FLAC is lossless: the same features as from the source

    numpy_batch = {name: np.array(out[name].to_pylist(), dtype=object) for name in out.column_names}
    kept, skipped = usable_examples(numpy_batch)
    assert skipped == {"language_unknown": 1} and len(kept["tokens"]) == 2
    mel_t, inputs, labels = collate(kept, 80)
    assert mel_t.shape == (2, 80, 3000)
    tok = tokenizer_for(51865)
    # Row "a": labels are the tokens shifted by one; the no-speech row is padded with <|endoftext|>, never a label.
    tokens_a = rows[0]["tokens"]
    assert inputs[0, : len(tokens_a) - 1].tolist() == tokens_a[:-1]
    assert labels[0, : len(tokens_a) - 1].tolist() == tokens_a[1:]
    assert labels[1].tolist() == [tok.no_speech, tok.eot] + [IGNORE] * (labels.shape[1] - 2)
    assert (inputs[1, 2:] == tok.eot).all()


def test_collate_hides_the_prompt_from_the_loss():
    tokens, loss_start = example_tokens(ROW, ALWAYS)
    batch = {"mel": np.array([np.zeros((80, 3000), "<f4").tobytes()], dtype=object), "tokens": np.array([tokens], dtype=object),
             "loss_start": np.array([loss_start])}
    _, inputs, labels = collate(batch, 80)
    assert (labels[0, : loss_start - 1] == IGNORE).all()
    assert labels[0, loss_start - 1 :].tolist() == tokens[loss_start:]


def test_learning_rate_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, 10, 100) for s in range(100)]
    assert factors[0] < factors[5] < factors[9] < 1.0 and factors[10] == 1.0
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and factors[-1] == pytest.approx(1 / 90) and lr_factor(100, 10, 100) == 0.0


def test_held_out_split_is_by_source_stable_and_never_empty():
    ids = [f"src-{i}" for i in range(50)]
    threshold = held_out_threshold(ids, 0.1)
    held = [s for s in ids if source_position(s) < threshold]
    assert len(held) == 5 and threshold == held_out_threshold(list(reversed(ids)), 0.1)
    assert len([s for s in ids[:3] if source_position(s) < held_out_threshold(ids[:3], 0.01)]) == 1  # at least one
    assert held_out_threshold(ids[:1], 0.5) == 0.0  # one source: nothing to hold out
    table = pa.table({"source_id": ids * 2, "segment_id": [f"w{i}" for i in range(100)]})
    train, test = select_split(table, threshold, 0, False), select_split(table, threshold, 0, True)
    assert train.num_rows + test.num_rows == 100 and test.num_rows == 10
    assert not set(train["source_id"].to_pylist()) & set(test["source_id"].to_pylist())
