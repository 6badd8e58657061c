"""The benchmark's workload generator (bench/workload.py): audio and SRT pair as the corpus job expects, the cues lie
inside the audio, and the same hours and seed give the same workload."""

from __future__ import annotations

import json

from bench.workload import generate_workload
from pipeline.io.transcripts import parse_srt
from pipeline.io.media import decode_audio
from pipeline.io.sources import discover_sources


def test_generated_workload_pairs_audio_and_timed_transcripts(tmp_path):
    sources = generate_workload(0.01, seed=3, root=tmp_path / "a", min_s=15, max_s=25)  # 36 s: two sources
    info = json.loads((sources.parent / "workload.json").read_text())
    assert len(info["sources"]) == 2 and info["audio_s"] >= 36
    discovery = discover_sources([str(sources)])
    assert len(discovery.sources) == 2 and not discovery.rejects  # every .opus found its same-stem .srt
    for entry in info["sources"]:
        seconds = len(decode_audio(sources / f"{entry['name']}.opus")) / 16000
        assert abs(seconds - entry["seconds"]) < 0.1
        cues = parse_srt((sources / f"{entry['name']}.srt").read_text()).cues
        assert len(cues) == entry["cues"] >= 1
        assert all(0 < c.start_ms < c.end_ms <= seconds * 1000 and c.end_ms - c.start_ms <= 30_000 for c in cues)
        assert all(a.end_ms <= b.start_ms for a, b in zip(cues, cues[1:]))
    # deterministic for a seed, and a finished workload is reused rather than rebuilt
    again = generate_workload(0.01, seed=3, root=tmp_path / "b", min_s=15, max_s=25)
    assert [p.read_text() for p in sorted(again.glob("*.srt"))] == [p.read_text() for p in sorted(sources.glob("*.srt"))]
    mtime = (sources / "talk0000.opus").stat().st_mtime_ns
    assert generate_workload(0.01, seed=3, root=tmp_path / "a", min_s=15, max_s=25) == sources
    assert (sources / "talk0000.opus").stat().st_mtime_ns == mtime
