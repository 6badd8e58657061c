"""Decoding holds the PCM once: a worker's memory beyond the samples themselves does not grow with the file."""

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


def test_a_two_hour_decode_holds_the_pcm_once(tmp_path):
    source = tmp_path / "two-hours.flac"
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={SECONDS}:samples_per_frame=16384",
           "-c:a", "flac", str(source))
    done = subprocess.run([sys.executable, "-c", DECODE_IN_A_FRESH_PROCESS, str(source), str(SECONDS + 60)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=True)
    measured = json.loads(done.stdout)
    assert measured["samples"] == SECONDS * 16000
    assert measured["peak"] - measured["before"] < PCM_BYTES + DECODE_MARGIN_BYTES, measured
    assert measured["peak"] < PCM_BYTES + PROCESS_MARGIN_BYTES, measured
