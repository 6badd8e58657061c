"""Add the sample's sources built from real speech around the Kennedy recording: one that switches language after
its first window, one paired with the transcript of another passage of the same speech, and a re-upload of the
recording (cut, resampled, re-encoded) with condensed captions, which only the audio can tell is a duplicate.

    python3 sample/real_speech.py        (generate.py runs it last; it is safe to run again alone)

Writes ``sources/mixed/`` and replaces its own lines in ``labels.jsonl``. Needs ffmpeg and the committed
``sources/en/jfk.opus``; the Spanish read clips come from ``tests/data/speech`` (from the MIT-licensed
pytest-audioeval package). Standard library only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEECH = HERE.parent / "tests" / "data" / "speech"
JFK = HERE / "sources" / "en" / "jfk.opus"
FOLDER = HERE / "sources" / "mixed"
KINDS = ("code_switched_real_speech", "wrong_transcript_real_speech", "reupload_condensed_captions_real_speech")
JFK_CUES = [(0.200, 2.200, "And so my fellow Americans,"),
            (3.100, 10.700, "ask not what your country can do for you, ask what you can do for your country.")]
SPANISH = [("es_pangrama.flac", "El veloz murciélago hindú comía feliz cardillo y kiwi."),
           ("es_conteo.flac", "Uno dos tres cuatro cinco seis siete ocho nueve diez.")]
SWITCH_AT = 31.0  # s: past the first 30 s window, so each language has windows of its own
# Another passage of the same address: the right speaker, speaking rate and timing, not these words.
OTHER_PASSAGE = [(0.200, 2.200, "We observe today not a victory of party"),
                 (3.100, 10.700, "but a celebration of freedom, symbolizing an end as well as a beginning.")]
# The re-upload: 2 s cut from the start, resampled to 22.05 kHz, MP3; its captions condensed by an editor (a word in
# five dropped or changed), so the word 3-gram Jaccard with the original's transcript is far below dedup's 0.7.
REUPLOAD_CUT_S = 2.0
REUPLOAD = [(0.000, 1.000, "My fellow Americans:"),
            (1.100, 8.700, "ask not what the country does for you, ask what you do for your country.")]
RATE = 16000
OPUS = ["-c:a", "libopus", "-b:a", "24k", "-ac", "1", "-fflags", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1"]


def ffmpeg() -> str:
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        sys.exit("ffmpeg not found (apt-get install ffmpeg, or pip install imageio-ffmpeg)")


def pcm_of(path: Path, tmp: Path) -> bytes:
    out = tmp / (path.stem + ".wav")
    subprocess.run([ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-i", str(path), "-ac", "1", "-ar", str(RATE), str(out)], check=True)
    with wave.open(str(out)) as w:
        return w.readframes(w.getnframes())


def silence(seconds: float) -> bytes:
    return b"\x00\x00" * int(round(seconds * RATE))


def srt(cues: list[tuple[float, float, str]]) -> str:
    def clock(s: float) -> str:
        ms = int(round(s * 1000))
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    return "".join(f"{i}\n{clock(a)} --> {clock(b)}\n{t}\n\n" for i, (a, b, t) in enumerate(cues, 1))


def write_opus(pcm: bytes, path: Path, tmp: Path) -> None:
    raw = tmp / "joined.raw"
    raw.write_bytes(pcm)
    subprocess.run([ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-f", "s16le", "-ar", str(RATE), "-ac", "1", "-i", str(raw), *OPUS, str(path)], check=True)


def main() -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    labels = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        jfk = pcm_of(JFK, tmp)
        # 1. Kennedy, a pause, then Spanish read speech: one recording, one timed transcript in two languages.
        parts, cues, at = [jfk, silence(SWITCH_AT - len(jfk) / 2 / RATE)], list(JFK_CUES), SWITCH_AT
        for name, text in SPANISH:
            clip = pcm_of(SPEECH / name, tmp)
            cues.append((round(at + 0.05, 3), round(at + len(clip) / 2 / RATE - 0.05, 3), text))
            parts += [clip, silence(0.5)]
            at += len(clip) / 2 / RATE + 0.5
        write_opus(b"".join(parts), FOLDER / "jfk_then_spanish.opus", tmp)
        (FOLDER / "jfk_then_spanish.srt").write_text(srt(cues), encoding="utf-8")
        labels.append({
            "audio": "sources/mixed/jfk_then_spanish.opus", "id": None, "source": "directory", "transcript": "sources/mixed/jfk_then_spanish.srt",
            "language": None, "audio_language": "en", "expected": "keep", "kind": KINDS[0], "duration_s": round(at, 2),
            "text": " ".join(c[2] for c in cues), "text_source": "public domain (Kennedy); pytest-audioeval 0.1.3 (MIT) Spanish samples",
            "speaker": "J. F. Kennedy, then a Spanish reader", "windows": {"0": "en", "1": "es"}, "audio_group": "jfk",
            "note": "code-switched: 11 s of real English speech, then Spanish read speech from 31 s, with a correct timed transcript "
                    "(no language suffix: the transcript holds both); kept with its first window en and its second es",
        })
        # 2. The same Kennedy recording with the transcript of another passage of the same speech.
        shutil.copy(JFK, FOLDER / "jfk_other_passage.opus")
        (FOLDER / "jfk_other_passage.en.srt").write_text(srt(OTHER_PASSAGE), encoding="utf-8")
        labels.append({
            "audio": "sources/mixed/jfk_other_passage.opus", "id": None, "source": "directory", "transcript": "sources/mixed/jfk_other_passage.en.srt",
            "language": "en", "audio_language": "en", "expected": "misaligned_transcript", "kind": KINDS[1], "duration_s": 11.0,
            "text": " ".join(c[2] for c in OTHER_PASSAGE), "text_source": "public domain (Kennedy, inaugural address 1961)", "speaker": "J. F. Kennedy",
            "note": "real speech paired with the transcript of another passage of the same address (plausible timing and rate): its words are not the ones spoken",
        })
        # 3. The same recording uploaded again: cut, resampled, re-encoded, with condensed captions.
        subprocess.run([ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-ss", str(REUPLOAD_CUT_S), "-i", str(JFK), "-ar", "22050", "-ac", "1",
                        "-c:a", "libmp3lame", "-b:a", "48k", "-fflags", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
                        str(FOLDER / "jfk_reupload.mp3")], check=True)
        (FOLDER / "jfk_reupload.en.srt").write_text(srt(REUPLOAD), encoding="utf-8")
        labels.append({
            "audio": "sources/mixed/jfk_reupload.mp3", "id": None, "source": "directory", "transcript": "sources/mixed/jfk_reupload.en.srt",
            "language": "en", "audio_language": "en", "expected": "audio_duplicate", "kind": KINDS[2], "duration_s": 9.0,
            "text": " ".join(c[2] for c in REUPLOAD), "text_source": "public domain (Kennedy); captions condensed here", "speaker": "J. F. Kennedy",
            "audio_group": "jfk",
            "note": "the Kennedy recording uploaded again (2 s cut at the start, 22.05 kHz MP3) with condensed captions: text dedup cannot "
                    "see it, the audio fingerprint does; dropped for jfk_then_spanish, the longest recording that contains it",
        })
    path = HERE / "labels.jsonl"
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line).get("kind") not in KINDS]
    kept = [json.dumps(_contained_clip(json.loads(line)), ensure_ascii=False) if json.loads(line).get("audio") == "sources/en/jfk.opus" else line
            for line in kept]
    # the malformed manifest line's label stays last
    last = [line for line in kept if json.loads(line).get("expected") == "bad_manifest_line"]
    body = [line for line in kept if line not in last] + [json.dumps(lab, ensure_ascii=False) for lab in labels] + last
    path.write_text("\n".join(body) + "\n", encoding="utf-8")
    print(f"wrote {FOLDER.relative_to(HERE)} and {len(labels)} labels")


def _contained_clip(label: dict) -> dict:
    """The Kennedy recording itself: jfk_then_spanish contains all of it, so audio dedup keeps that longer recording."""
    return dict(label, expected="audio_duplicate", audio_group="jfk",
                note="real human speech: J. F. Kennedy, inaugural address 1961 (public domain); sources/mixed/jfk_then_spanish.opus "
                     "begins with this whole recording, so audio dedup drops this clip for the longer recording (same caption quality)")


if __name__ == "__main__":
    main()
