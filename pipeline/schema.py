"""Declared reason codes and the Arrow schemas of everything wspsr writes or passes between stages."""

from __future__ import annotations

import enum
import json
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = "5"  # 5: markers name their inputs by id and key, the fingerprints table keys its rows; 4: cluster_id on corpus and reject rows, the fingerprints table; 3: per-window language and transcript-agreement columns; 2: corpus markers name their sources' refs too
METADATA_SCHEMA_VERSION = b"wspsr.schema_version"
METADATA_FINGERPRINT = b"wspsr.config_fingerprint"


class RejectReason(str, enum.Enum):
    """Why a source (or a stretch of one) did not become training data. Values are the stored codes."""

    # discovery
    BAD_MANIFEST_LINE = "bad_manifest_line"
    MISSING_TRANSCRIPT = "missing_transcript"
    MISSING_AUDIO = "missing_audio"
    UNSAFE_PATH = "unsafe_path"
    DUPLICATE_SOURCE = "duplicate_source"
    # transcript
    TRANSCRIPT_UNREADABLE = "transcript_unreadable"
    TRANSCRIPT_TOO_LARGE = "transcript_too_large"
    BAD_ENCODING = "bad_encoding"
    BAD_TRANSCRIPT_FORMAT = "bad_transcript_format"
    EMPTY_TRANSCRIPT = "empty_transcript"
    # decode
    AUDIO_NOT_FOUND = "audio_not_found"
    FILE_TOO_LARGE = "file_too_large"
    BAD_AUDIO = "bad_audio"
    NO_AUDIO_STREAM = "no_audio_stream"
    DECODE_TIMEOUT = "decode_timeout"
    AUDIO_TOO_LONG = "audio_too_long"
    # segmentation (source level)
    UNTIMED_TRANSCRIPT_TOO_LONG = "untimed_transcript_too_long"
    NO_USABLE_CUES = "no_usable_cues"
    # segmentation (stretch level: the source is kept, a part of it is not)
    CUE_TOO_LONG = "cue_too_long"
    INVALID_CUE_TIMING = "invalid_cue_timing"
    CUE_BEYOND_AUDIO = "cue_beyond_audio"
    NO_SPEECH_NOT_SAMPLED = "no_speech_not_sampled"
    # machine-generated or low-quality transcripts
    MACHINE_GENERATED_CAPTIONS = "machine_generated_captions"
    ASR_TRANSCRIPT = "asr_transcript"  # timed the way a speech recogniser (Whisper) times its output
    ALL_UPPERCASE = "all_uppercase"
    ALL_LOWERCASE = "all_lowercase"
    MISSING_PUNCTUATION = "missing_punctuation"
    RULE_BASED_ITN = "rule_based_itn"
    REPETITIVE_TEXT = "repetitive_text"
    MOSTLY_NON_SPEECH_MARKERS = "mostly_non_speech_markers"
    IMPLAUSIBLE_CHAR_RATE = "implausible_char_rate"
    # language agreement
    LANGUAGE_UNKNOWN = "language_unknown"
    LANGUAGE_MISMATCH = "language_mismatch"  # a source, or a window (stretch) of a kept one
    # transcript agreement (the window's own transcript scored against its speech by Whisper)
    TRANSCRIPT_MISMATCH = "transcript_mismatch"  # a window whose words are not the ones spoken (stretch)
    MISALIGNED_TRANSCRIPT = "misaligned_transcript"  # a source most of whose speech fails the agreement check
    # transcription
    TRANSCRIPTION_FAILED = "transcription_failed"
    # pseudo-label check
    HIGH_ERROR_RATE = "high_error_rate"
    # training (windows a trainer cannot use; counted in metrics.json, the corpus is not changed)
    TOO_MANY_TOKENS = "too_many_tokens"
    # deduplication
    DUPLICATE = "duplicate"
    EVAL_OVERLAP = "eval_overlap"
    AUDIO_DUPLICATE = "audio_duplicate"  # the same recording as a kept source (re-upload, re-encode, clip of it)
    # fetching from the web (wspsr fetch; also uses MACHINE_GENERATED_CAPTIONS, MISSING_TRANSCRIPT,
    # FILE_TOO_LARGE, AUDIO_TOO_LONG, DUPLICATE_SOURCE)
    UNSAFE_URL = "unsafe_url"
    FETCH_FAILED = "fetch_failed"
    NO_MEDIA = "no_media"
    LIVE_STREAM = "live_stream"
    # any stage: an unexpected exception on this row (a bug, a library's limit); the detail names the exception
    INTERNAL_ERROR = "internal_error"
    # any stage: the row took longer than the stage's time limit per source
    STAGE_TIMEOUT = "stage_timeout"


class RejectScope(str, enum.Enum):
    SOURCE = "source"  # the whole source is dropped
    STRETCH = "stretch"  # a time range of a kept source is dropped


# Columns that travel between stages, one row per source. Stages may add columns; these have fixed types
# so that batches built from Python rows agree with each other (Arrow would infer ``null`` for empty lists).
CUE_TYPE = pa.struct([("start_ms", pa.int64()), ("end_ms", pa.int64()), ("text", pa.string())])
AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
WINDOW_TYPE = pa.struct(
    [
        ("segment_id", pa.string()),
        ("window_index", pa.int32()),
        ("start_ms", pa.int64()),
        ("end_ms", pa.int64()),
        ("flac", pa.large_binary()),
        ("text", pa.string()),
        ("text_timestamped", pa.string()),
        ("prev_text", pa.string()),
        ("has_speech", pa.bool_()),
        # per-window judgement (score_windows, judge_windows); null where the window was not scored
        ("language", pa.string()),
        ("task", pa.string()),
        ("languages", pa.list_(pa.string())),
        ("transcript_language", pa.string()),
        ("transcript_language_prob", pa.float32()),
        ("audio_language", pa.string()),
        ("audio_language_prob", pa.float32()),
        ("audio_language_probs", pa.string()),
        ("agreement_logprob", pa.float32()),
        ("agreement_unlikely_share", pa.float32()),
        ("agreement_tokens", pa.int32()),
        ("no_speech_prob", pa.float32()),
    ]
)
SPEECH_WINDOW_TYPE = pa.struct(
    [("window_index", pa.int32()), ("channel", pa.int32()), ("start_ms", pa.int64()), ("end_ms", pa.int64()), ("pcm", pa.large_binary())]
)
SEGMENT_TYPE = pa.struct(
    [
        ("window_index", pa.int32()),
        ("channel", pa.int32()),  # null: the downmix
        ("start_ms", pa.int64()),
        ("end_ms", pa.int64()),
        ("text", pa.string()),
        ("language", pa.string()),
        ("language_prob", pa.float32()),
        ("avg_logprob", pa.float32()),
        ("compression_ratio", pa.float32()),
        ("no_speech_prob", pa.float32()),
        ("temperature", pa.float32()),
        ("flag", pa.string()),
    ]
)
DROPPED_TYPE = pa.struct(
    [
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("start_ms", pa.int64()),
        ("end_ms", pa.int64()),
    ]
)

STREAM_COLUMNS: dict[str, pa.DataType] = {
    "source_id": pa.string(),
    "source": pa.string(),
    "ref": pa.int64(),  # discovery: the split's index and the row's position in it (orders the rows of one run)
    "key": pa.int64(),  # discovery: the row's identity across runs (id and version): what committed work is named by
    "manifest": pa.string(),  # discovery: the manifest a row came from, and its line
    "manifest_line": pa.int64(),
    "audio_path": pa.string(),
    "transcript_path": pa.string(),
    "inline_text": pa.string(),
    "transcript_encoding": pa.string(),
    "transcript_origin": pa.string(),
    "language": pa.string(),
    "metadata": pa.string(),  # JSON object of the source's extra fields
    "transcript_format": pa.string(),
    "transcript_text": pa.string(),
    "cues": pa.list_(CUE_TYPE),  # null when the transcript is untimed
    "invalid_cues": pa.int32(),
    "duration_ms": pa.int64(),
    "pcm": pa.large_binary(),  # 16 kHz mono s16le, whole recording
    "windows": pa.list_(WINDOW_TYPE),
    "output_name": pa.string(),  # where per-file outputs of the source go (relative path, no extension)
    "speech_windows": pa.list_(SPEECH_WINDOW_TYPE),  # transcribe: <=30 s windows cut at silences
    "segments": pa.list_(SEGMENT_TYPE),  # transcribe: Whisper's timed segments, absolute times
    "language_prob": pa.float32(),
    "source_language": pa.string(),
    "group": pa.string(),
    "word_errors": pa.int64(),
    "reference_words": pa.int64(),
    "wer": pa.float32(),
    "char_errors": pa.int64(),
    "reference_chars": pa.int64(),
    "cer": pa.float32(),
    "speech_ms": pa.int64(),
    "languages": pa.list_(pa.string()),
    "channels": pa.int32(),
    "dropped": pa.list_(DROPPED_TYPE),
    "task": pa.string(),
    "transcript_language": pa.string(),
    "transcript_language_prob": pa.float32(),
    "audio_language": pa.string(),
    "audio_language_prob": pa.float32(),
    "audio_language_probs": pa.string(),  # JSON: the top languages and the transcript's, averaged over windows
    "minhash": pa.binary(),
    "dedup_quality": pa.string(),
    "fingerprint": pa.binary(),  # Chromaprint's raw uint32 items (little-endian), from the decode
    "reject_stage": pa.string(),
    "reject_reason": pa.string(),
    "reject_detail": pa.string(),
    "reject_transient": pa.bool_(),  # the reject came from a fault that may pass (I/O error, signal, timeout under load)
    "duplicate_of": pa.string(),
    "source_languages": pa.list_(pa.string()),
    "code_switched": pa.bool_(),
}

# One row per window: the training example. Documented in docs/output.md.
CORPUS_SCHEMA = pa.schema(
    [
        ("segment_id", pa.string()),
        ("source_id", pa.string()),
        ("source", pa.string()),
        ("cluster_id", pa.string()),  # the duplicate cluster: its kept source's id (the source's own id when alone)
        ("window_index", pa.int32()),
        ("start_ms", pa.int64()),
        ("end_ms", pa.int64()),
        ("audio", AUDIO_TYPE),
        ("sample_rate", pa.int32()),
        ("text", pa.string()),
        ("text_timestamped", pa.string()),
        ("prev_text", pa.string()),
        ("language", pa.string()),
        ("task", pa.string()),
        ("has_speech", pa.bool_()),
        ("transcript_language", pa.string()),
        ("transcript_language_prob", pa.float32()),
        ("audio_language", pa.string()),
        ("audio_language_prob", pa.float32()),
        ("audio_language_probs", pa.string()),
        ("languages", pa.list_(pa.string())),
        ("agreement_logprob", pa.float32()),
        ("agreement_unlikely_share", pa.float32()),
        ("agreement_tokens", pa.int32()),
        ("no_speech_prob", pa.float32()),
        ("source_languages", pa.list_(pa.string())),
        ("code_switched", pa.bool_()),
        ("metadata", pa.string()),
    ]
)

def hf_features(schema: pa.Schema, audio_columns: tuple[str, ...] = ("audio",), sampling_rate: int = 16000) -> dict[str, Any]:
    """Hugging Face ``datasets``' features of a schema, in the form its Parquet metadata key ``huggingface`` holds
    (``{"info": {"features": ...}}``), so ``load_dataset("parquet", ...)`` gives an ``Audio`` column with no cast.
    Written without importing ``datasets`` (not a dependency of the pipeline)."""

    def feature(type_: pa.DataType) -> dict[str, Any]:
        if pa.types.is_list(type_) or pa.types.is_large_list(type_):
            return {"feature": feature(type_.value_type), "_type": "List"}
        if pa.types.is_struct(type_):
            return {field.name: feature(field.type) for field in type_}
        names = {pa.string(): "string", pa.large_string(): "large_string", pa.binary(): "binary", pa.large_binary(): "large_binary",
                 pa.bool_(): "bool", pa.int32(): "int32", pa.int64(): "int64", pa.float32(): "float32", pa.float64(): "float64"}
        return {"dtype": names[type_], "_type": "Value"}

    features = {field.name: ({"sampling_rate": sampling_rate, "_type": "Audio"} if field.name in audio_columns else feature(field.type))
                for field in schema}
    return {"info": {"features": features}}


# The corpus files carry their HF features: the audio column is datasets' Audio at 16 kHz.
CORPUS_SCHEMA = CORPUS_SCHEMA.with_metadata({b"huggingface": json.dumps(hf_features(CORPUS_SCHEMA)).encode()})

# wspsr transcribe: one row per segment.
TRANSCRIPTS_SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("source", pa.string()),
        ("segment_index", pa.int32()),
        ("window_index", pa.int32()),
        ("channel", pa.int32()),  # with --channels split: the channel (0 = first) the segment was heard on; else null
        ("start_ms", pa.int64()),
        ("end_ms", pa.int64()),
        ("text", pa.string()),
        ("language", pa.string()),
        ("language_prob", pa.float32()),
        ("avg_logprob", pa.float32()),
        ("compression_ratio", pa.float32()),
        ("no_speech_prob", pa.float32()),
        ("temperature", pa.float32()),
        ("flag", pa.string()),  # null, or why the hallucination guard distrusts the segment
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("source", pa.string()),
        ("scope", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("start_ms", pa.int64()),
        ("end_ms", pa.int64()),
        ("duration_ms", pa.int64()),
        ("duplicate_of", pa.string()),
        ("cluster_id", pa.string()),  # corpus job: as in CORPUS_SCHEMA (a rejected duplicate: the source kept for it)
        ("transient", pa.bool_()),  # a fault that may pass (read error, signal, timeout), retried before: --retry-transient
    ]
)

# The corpus job: one row per kept source with an acoustic fingerprint, read back by the audio dedup step.
FINGERPRINTS_SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("key", pa.int64()),  # the source's key (pipeline.io.sources.source_key): its handle in the audio dedup step
        ("fingerprint", pa.binary()),
        ("dedup_quality", pa.string()),
        ("duration_ms", pa.int64()),
    ]
)


def table_from_rows(rows: list[dict[str, Any]]) -> pa.Table:
    """Build a stream batch from Python rows: declared columns get their declared type, others are inferred."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    arrays, fields = [], []
    for name in names:
        values = [row.get(name) for row in rows]
        declared = STREAM_COLUMNS.get(name)
        array = pa.array(values, type=declared) if declared is not None else pa.array(values)
        arrays.append(array)
        fields.append(pa.field(name, array.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
