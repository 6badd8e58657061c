"""Decoding holds the PCM once: a worker's memory beyond the samples themselves does not grow with the file; and the
corpus job's decoding stages (decode, speaking rate, windows) pass it on without copies, within the memory each
such task reserves from Ray (``jobs.corpus.pcm_task_memory_gb``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.data import ffmpeg

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SECONDS = 7200
PCM_BYTES = SECONDS * 16000 * 2
# What decoding may add beyond the PCM: the last read and allocator slack. Holding ffmpeg's output twice (a list of
# reads joined into one bytes object) costs another PCM_BYTES, far past this.
DECODE_MARGIN_BYTES = 48 * 2**20
# The whole process beyond the PCM: the interpreter with numpy, pyarrow and soundfile imported, and the above.
PROCESS_MARGIN_BYTES = 160 * 2**20
DECODE_IN_A_FRESH_PROCESS = """
import json, sys
from pipeline.io.media import DecodeLimits, decode_audio

def high_water_mark():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))

before = high_water_mark()
pcm = decode_audio(sys.argv[1], DecodeLimits(max_seconds=float(sys.argv[2])))
print(json.dumps({"before": before, "peak": high_water_mark(), "samples": len(pcm)}))
"""


STAGES_IN_A_FRESH_PROCESS = """
import json, sys
from jobs.corpus import SECTIONS, audio_stages, pcm_task_memory_gb
from pipeline.config import build_config
from pipeline.schema import table_from_rows
from pipeline.stage import Stage, run_stages
from stages.load_transcript import TranscriptOptions, load_transcript

def high_water_mark():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))

config = build_config(SECTIONS, {"language": {"enabled": False}})
row = {"source_id": "long", "source": sys.argv[1], "audio_path": sys.argv[1], "transcript_path": sys.argv[2], "language": "en"}
batch = run_stages([Stage("load_transcript", load_transcript, TranscriptOptions())], table_from_rows([row]))
before = high_water_mark()
out = run_stages(audio_stages(config), batch).to_pylist()[0]
print(json.dumps({"before": before, "peak": high_water_mark(), "windows": len(out["windows"] or []), "reason": out.get("reject_reason"),
                  "reserved": pcm_task_memory_gb(config["decode"]) * 2**30}))
"""


@pytest.fixture(scope="module")
def two_hours(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("long") / "two-hours.flac"
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={SECONDS}:samples_per_frame=16384",
           "-c:a", "flac", str(source))
    return source


def test_a_two_hour_decode_holds_the_pcm_once(two_hours):
    source = two_hours
    done = subprocess.run([sys.executable, "-c", DECODE_IN_A_FRESH_PROCESS, str(source), str(SECONDS + 60)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=True)
    measured = json.loads(done.stdout)
    assert measured["samples"] == SECONDS * 16000
    assert measured["peak"] - measured["before"] < PCM_BYTES + DECODE_MARGIN_BYTES, measured
    assert measured["peak"] < PCM_BYTES + PROCESS_MARGIN_BYTES, measured


def test_the_corpus_jobs_decoding_stages_pass_a_two_hour_recording_on_without_copies(two_hours, tmp_path):
    """Decode (with the fingerprint), speaking rate and windows on one 2-hour source, as one decoding task runs them:
    the PCM is held once, and the task stays within what it reserves (holding the PCM once per stage, as row dicts
    did, took it past twice that)."""
    cues = tmp_path / "two-hours.srt"
    cues.write_text("".join(f"{i + 1}\n{_clock(i * 20)} --> {_clock(i * 20 + 15)}\nWords spoken in cue number {i}.\n\n"
                            for i in range(SECONDS // 20 - 1)))
    done = subprocess.run([sys.executable, "-c", STAGES_IN_A_FRESH_PROCESS, str(two_hours), str(cues)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=True)
    measured = json.loads(done.stdout)
    assert measured["reason"] is None and measured["windows"] == SECONDS // 20 - 1
    assert measured["peak"] - measured["before"] < measured["reserved"], measured
    assert measured["peak"] - measured["before"] < 2 * PCM_BYTES, measured


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d},000"
