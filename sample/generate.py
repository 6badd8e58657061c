#!/usr/bin/env python3
"""Generate wspsr's bundled sample corpus (the files beside this script).

The sample is a small, fully labelled set of audio + transcript pairs in 8 languages:
clean sources the pipeline must keep, and planted defects, each with the outcome the
pipeline should give it (``labels.jsonl``).  Speech is synthesised with espeak-ng from
short human-written texts in Debian's fortune packages (plus a few sentence pairs
written for this sample and 11 s of real speech: J. F. Kennedy, public domain).

The output is committed, so this script never runs at pipeline time.  It needs only
Python 3 (standard library) and the Debian packages

    espeak-ng ffmpeg fortunes fortunes-de fortunes-es fortunes-it fortunes-ru \
    fortunes-br fortunes-pl fortunes-zh

Run it from anywhere:  ``python3 sample/generate.py``.  Text choices, timings and labels
are deterministic (fixed seed; everything is sorted before it is drawn from); encoded
audio bytes may differ slightly between espeak-ng / ffmpeg versions.
"""

from __future__ import annotations

import array
import json
import math
import random
import re
import shutil
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass, field
from pathlib import Path

SEED = 1961
SR = 22050  # espeak-ng's native rate; every clip is assembled at this rate
HERE = Path(__file__).resolve().parent
FORTUNES = Path("/usr/share/games/fortunes")
# Real human speech: kept from a previous run (the committed file) or taken from the
# project's shared data folder.
JFK_CANDIDATES = [HERE / "sources" / "en" / "jfk.opus", HERE.parent.parent / "shared" / "data" / "jfk.flac"]
JFK_CUES = [
    (0.200, 2.200, "And so my fellow Americans,"),
    (3.100, 10.700, "ask not what your country can do for you, ask what you can do for your country."),
]

LANGS = ["en", "de", "es", "it", "ru", "pt", "pl", "zh"]
LANG_NAMES = {"en": "English", "de": "German", "es": "Spanish", "it": "Italian", "ru": "Russian",
              "pt": "Portuguese (Brazil)", "pl": "Polish", "zh": "Chinese (Mandarin)"}
VOICES = {
    "en": ["en-us", "en-us+f3", "en-gb", "en-gb-x-rp+m3", "en-us+m5", "en-gb+f2"],
    "de": ["de", "de+f3", "de+m4"],
    "es": ["es", "es+f2", "es-419+m3"],
    "it": ["it", "it+f3", "it+m2"],
    "ru": ["ru", "ru+f2", "ru+m3"],
    "pt": ["pt-br", "pt-br+f3", "pt-br+m2"],
    "pl": ["pl", "pl+f3", "pl+m4"],
    # `cmn` (latin as English) reads the tone digits of its pinyin in English in espeak-ng 1.51; this voice does not.
    "zh": ["cmn-latn-pinyin", "cmn-latn-pinyin+f3", "cmn-latn-pinyin+m2"],
}
# Which foreign languages get an English-translation transcript (expected `translate`).
# Chosen as the languages Whisper base identifies best from espeak-ng speech (see README).
TRANSLATE_LANGS = ["es", "de", "pl"]
# Language of the long recording that starts with ~38 s of low noise.
LEAD_NOISE_LANG = "es"

# ---------------------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------------------

FORTUNE_FILES = {
    "en": ["wisdom", "fortunes", "literature", "people", "education", "science", "work",
           "platitudes", "food", "pets", "humorists", "kids"],
    "de": ["de/zitate", "de/sprichworte", "de/sprueche", "de/wusstensie", "de/murphy"],
    "es": ["es/sabiduria.fortunes", "es/vida.fortunes", "es/amistad.fortunes", "es/ciencia.fortunes",
           "es/filosofia.fortunes", "es/libertad.fortunes", "es/verdad.fortunes", "es/humanos.fortunes"],
    "it": ["it/italia", "it/definizioni", "it/leggi", "it/norm", "it/paolotedeschi", "it/zuse"],
    "ru": ["ru/life", "ru/knowledge", "ru/truth", "ru/time", "ru/happy", "ru/friendship",
           "ru/success", "ru/work", "ru/wealth", "ru/book", "ru/education"],
    "pt": ["brasil"],
    "pl": ["pl/seneka", "pl/nauka", "pl/milosc", "pl/misc", "pl/zen", "pl/pratchett"],
    "zh": ["chinese"],
}
LETTERS = {
    "en": "a-zA-Z",
    "de": "a-zA-ZäöüÄÖÜß",
    "es": "a-zA-ZáéíóúüñÁÉÍÓÚÜÑ",
    "it": "a-zA-ZàèéìíòóùÀÈÉÌÒÙ",
    "pt": "a-zA-ZáàâãçéêíóôõúüÁÀÂÃÇÉÊÍÓÔÕÚ",
    "pl": "a-zA-ZąćęłńóśźżĄĆĘŁŃÓŚŹŻ",
    "ru": "а-яА-ЯёЁ",
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ATTRIBUTION = re.compile(r"^\s*(--|—|―)")
ZH_TEXT = re.compile(r"[\u4e00-\u9fff，。！？；、]+")
ZH_SENTENCE = re.compile(r"[^。！？]+[。！？]")


def fortune_file(rel: str) -> Path:
    """The UTF-8 version of a fortune file (some `.u8` files are empty: use the plain one)."""
    u8 = FORTUNES / (rel + ".u8")
    if u8.exists() and u8.stat().st_size > 0:
        return u8
    return FORTUNES / rel


def split_sentences(text: str, lang: str) -> list[str]:
    if lang == "zh":
        return ZH_SENTENCE.findall(text)
    parts = re.split(r"(?<=[.!?])\s+(?=[¿¡]?[A-ZÄÖÜÁÉÍÓÚÑÀÈÌÒÙÂÃÇÊÔÕĄĆĘŁŃŚŹŻА-ЯЁ])", text)
    return [p.strip() for p in parts if p.strip()]


def clean_fortune(raw: str, lang: str) -> str | None:
    """One fortune as a single clean line, or None if it is not a plain, punctuated text."""
    lines = ANSI.sub("", raw).strip("\n").split("\n")
    for i, line in enumerate(lines):
        if i > 0 and ATTRIBUTION.match(line):
            attribution = " ".join(lines[i:])
            lines = lines[:i]
            break
    else:
        attribution = ""
    lines = [ln.rstrip() for ln in lines]
    if not lines or any(not ln or ln[0].isspace() for ln in lines):
        return None  # multi-paragraph, indented (dialogue, verse, definitions) or empty
    if len(lines) > 1 and all(ln[0].isupper() for ln in lines) and any(ln[-1] not in ".!?。！？" for ln in lines[:-1]):
        return None  # verse: every line starts with a capital
    if lang == "zh":
        # Modern folk proverbs only (the file also holds classical verse and manuals).
        if "《谚语》" not in attribution:
            return None
        text = "".join(ln.strip() for ln in lines)
        if not ZH_TEXT.fullmatch(text) or text[-1] not in "。！？" or not 8 <= len(text) <= 40:
            return None
        return text
    text = re.sub(r"\s+", " ", " ".join(lines)).strip()
    letters = LETTERS[lang]
    dash = " - " if lang == "ru" else ""
    if not re.fullmatch(rf"[{letters} ,.;!?'¿¡-]+", text):
        return None
    if re.search(r"\.\.|--|[,;]\s*[.!?]|\s[,.;!?]", text):
        return None
    if re.search(rf"'(?![{letters}])|(?<![{letters}])'", text):
        return None  # quotes, or Italian `e'` written for `è`
    if re.search(rf"(?<![{letters}])-|-(?![{letters}])", text.replace(" - ", "") if dash else text):
        return None
    if not re.match(rf"[¿¡]?[{letters}]", text) or not text.lstrip("¿¡")[0].isupper():
        return None
    if text[-1] not in ".!?" or text.endswith(("?!", "!?")):
        return None
    words = text.split()
    if any(sum(c.isupper() for c in w) > 1 for w in words):
        return None  # acronyms or shouting
    sentences = split_sentences(text, lang)
    if any(len(s.split()) < 3 for s in sentences):
        return None  # abbreviations ("Mr.") or fragments
    return text


# Texts not wanted in a sample others will read: sensitive topics, and a few entries with typos.
EXCLUDE = re.compile("|".join([
    r"suicid", r"\bkill", r"\brape", r"abortion", r"\bnazi", r"hitler", r"\bjews?\b", r"\bsex", r"\bdrunk",
    r"\bdrugs?\b", r"\bgun", r"\bslave", r"\bdie\b(?=.*\b(you|we|I)\b)",  # English
    r"abtreibung", r"juden", r"waschen und rasieren", r"wir seinen gut", r"schei(ß|ss)", r"prügel",  # German
    r"quitarse la vida", r"\bmatar",  # Spanish
    r"aborto", r"\bmafi", r"strappo tutte",  # Italian
    r"mate-se", r"tomadita", r"dowload", r"file not found",  # Portuguese
    r"самоуби", r"убий",  # Russian
]), re.IGNORECASE)


class TextPool:
    """Clean fortunes of one language, shuffled with a fixed seed; each is used once."""

    def __init__(self, lang: str):
        self.lang = lang
        seen: set[str] = set()
        items: list[tuple[str, str]] = []
        for rel in FORTUNE_FILES[lang]:
            path = fortune_file(rel)
            raw = path.read_text(encoding="utf-8", errors="replace")
            for entry in re.split(r"\n%\n", raw):
                text = clean_fortune(entry, lang)
                if text and text not in seen:
                    seen.add(text)
                    items.append((text, f"fortunes{'' if lang == 'en' else '-' + ('br' if lang == 'pt' else lang)}:{path.name}"))
        items.sort()
        random.Random(f"{SEED}:{lang}").shuffle(items)
        items = [(t, o) for t, o in items if not EXCLUDE.search(t)]
        self.items = items
        self.available = len(items)

    def take(self, min_words: int = 6, max_words: int = 28) -> tuple[str, str]:
        for i, (text, origin) in enumerate(self.items):
            n = len(text) // 2 if self.lang == "zh" else len(text.split())
            if min_words <= n <= max_words:
                del self.items[i]
                return text, origin
        raise RuntimeError(f"no {self.lang} fortune left with {min_words}-{max_words} words")


# Sentence pairs written for this sample: foreign speech and a faithful English translation.
TRANSLATIONS = {
    "de": [("Der Zug nach Hamburg fährt heute eine Stunde später ab.", "The train to Hamburg leaves an hour later today."),
           ("Bitte warten Sie in der Halle und nicht auf dem Bahnsteig.", "Please wait in the hall and not on the platform.")],
    "es": [("Mañana vamos al mercado para comprar fruta fresca.", "Tomorrow we are going to the market to buy fresh fruit."),
           ("Mi hermana quiere preparar una tarta de manzana para la cena.", "My sister wants to make an apple pie for dinner.")],
    "it": [("La biblioteca del paese resta chiusa fino a lunedì.", "The village library stays closed until Monday."),
           ("I libri presi in prestito si possono restituire in segreteria.", "Borrowed books can be returned at the front office.")],
    "pt": [("O ônibus para o centro passa a cada quinze minutos.", "The bus to the city centre comes every fifteen minutes."),
           ("Se você perder este, pode esperar o próximo na mesma parada.", "If you miss this one, you can wait for the next one at the same stop.")],
    "ru": [("Сегодня вечером в парке будет концерт под открытым небом.", "Tonight there will be an open-air concert in the park."),
           ("Возьмите с собой тёплую куртку, потому что ночью бывает холодно.", "Bring a warm jacket, because it gets cold at night.")],
    "pl": [("W sobotę pojedziemy rowerami nad jezioro.", "On Saturday we will ride our bikes to the lake."),
           ("Jeśli będzie padać, zostaniemy w domu i zagramy w szachy.", "If it rains, we will stay at home and play chess.")],
    "zh": [("明天早上我们一起去公园散步。", "Tomorrow morning we will go for a walk in the park together."),
           ("如果下雨，我们就在家里喝茶。", "If it rains, we will drink tea at home.")],
}

# ---------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------

Samples = array.array  # 16-bit signed mono at SR


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def read_wav(path: Path) -> Samples:
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == SR, path
        data = array.array("h")
        data.frombytes(w.readframes(w.getnframes()))
    if sys.byteorder == "big":
        data.byteswap()
    return data


def write_wav(path: Path, samples: Samples) -> None:
    data = array.array("h", samples)
    if sys.byteorder == "big":
        data.byteswap()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(data.tobytes())


_TTS_CACHE: dict[tuple[str, str, int], Samples] = {}


def tts(text: str, voice: str, speed: int, tmp: Path) -> Samples:
    """espeak-ng speech for one sentence, with espeak's own leading/trailing silence cut off."""
    key = (text, voice, speed)
    if key not in _TTS_CACHE:
        _TTS_CACHE[key] = _tts(text, voice, speed, tmp)
    return array.array("h", _TTS_CACHE[key])


def _tts(text: str, voice: str, speed: int, tmp: Path) -> Samples:
    txt, wav = tmp / "tts.txt", tmp / "tts.wav"
    txt.write_text(text, encoding="utf-8")
    run(["espeak-ng", "-v", voice, "-s", str(speed), "-f", str(txt), "-w", str(wav)])
    s = read_wav(wav)
    loud = [i for i in range(len(s)) if abs(s[i]) > 300]
    margin = int(0.01 * SR)
    return s[max(0, loud[0] - margin): min(len(s), loud[-1] + margin)]


def silence(seconds: float) -> Samples:
    return array.array("h", bytes(2 * int(round(seconds * SR))))


def noise(seconds: float, rng: random.Random, sigma: float) -> Samples:
    return array.array("h", (max(-32768, min(32767, int(rng.gauss(0, sigma)))) for _ in range(int(round(seconds * SR)))))


def music(seconds: float, rng: random.Random) -> Samples:
    """A plain synthetic melody (sine notes with an envelope), standing in for background music."""
    out = array.array("h")
    scale = [261.63, 293.66, 329.63, 392.00, 440.00, 523.25]
    note_len = 0.25
    n_notes = int(seconds / note_len)
    for _ in range(n_notes):
        f = rng.choice(scale)
        n = int(note_len * SR)
        for i in range(n):
            env = min(1.0, i / 400) * (1 - i / n) ** 1.5
            v = 0.25 * env * (math.sin(2 * math.pi * f * i / SR) + 0.3 * math.sin(4 * math.pi * f * i / SR))
            out.append(int(v * 32767))
    return out


@dataclass
class Cue:
    start: float
    end: float
    text: str


def speak(sentences: list[str], voice: str, speed: int, rng: random.Random, tmp: Path,
          lead: Samples | None = None, gap=(0.3, 1.5)) -> tuple[Samples, list[Cue]]:
    """Sentences spoken one after another with pauses; one cue per sentence, timed exactly."""
    audio = lead if lead is not None else silence(round(rng.uniform(0.2, 0.6), 2))
    audio = array.array("h", audio)
    cues = []
    for i, sentence in enumerate(sentences):
        if i:
            audio.extend(silence(round(rng.uniform(*gap), 2)))
        s = tts(sentence, voice, speed, tmp)
        cues.append(Cue(len(audio) / SR, (len(audio) + len(s)) / SR, sentence))
        audio.extend(s)
    audio.extend(silence(round(rng.uniform(0.2, 0.6), 2)))
    return audio, cues


ENCODE = {
    # Ogg Opus mono ~24 kbit/s: most of the sample.
    "opus": ["-ac", "1", "-c:a", "libopus", "-b:a", "24k"],
    "mp3": ["-ac", "1", "-c:a", "libmp3lame", "-b:a", "32k"],
    "m4a": ["-ac", "1", "-c:a", "aac", "-b:a", "32k"],
    "webm": ["-ac", "1", "-c:a", "libopus", "-b:a", "24k"],
    # 44.1 kHz stereo 24-bit FLAC and 8 kHz WAV exercise resampling and down-mixing.
    "flac": ["-ar", "44100", "-ac", "2", "-c:a", "flac", "-sample_fmt", "s32", "-bits_per_raw_sample", "24"],
    "wav": ["-ar", "8000", "-ac", "1", "-c:a", "pcm_s16le"],
}
BITEXACT = ["-map_metadata", "-1", "-fflags", "+bitexact", "-flags", "+bitexact"]


def encode(samples: Samples, out: Path, fmt: str, tmp: Path) -> None:
    wav = tmp / "clip.wav"
    write_wav(wav, samples)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":  # a tiny video track (64x36, 2 fps) plus AAC audio
        dur = len(samples) / SR
        run(["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"color=c=0x203040:s=64x36:r=2:d={dur:.3f}",
             "-i", str(wav), "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "veryslow", "-crf", "40",
             "-pix_fmt", "yuv420p", "-ac", "1", "-c:a", "aac", "-b:a", "32k", "-shortest", *BITEXACT, str(out)])
        return
    run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(wav), *ENCODE[fmt], *BITEXACT, str(out)])


def video_only(out: Path, seconds: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    run(["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"color=c=0x402030:s=64x36:r=2:d={seconds:.3f}",
         "-c:v", "libx264", "-preset", "veryslow", "-crf", "40", "-pix_fmt", "yuv420p", "-an", *BITEXACT, str(out)])


# ---------------------------------------------------------------------------------------
# Transcript formats
# ---------------------------------------------------------------------------------------


def ts(seconds: float, sep: str = ",", hours: bool = True) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}" if hours else f"{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(cues: list[Cue], crlf: bool = False, bom: bool = False, wrap: int = 0) -> str:
    blocks = []
    for i, c in enumerate(cues, 1):
        text = c.text
        if wrap and len(text) > wrap and " " in text:  # two-line cue, as subtitle editors write them
            words = text.split()
            half = len(words) // 2
            text = " ".join(words[:half]) + "\n" + " ".join(words[half:])
        blocks.append(f"{i}\n{ts(c.start)} --> {ts(c.end)}\n{text}\n")
    out = "\n".join(blocks)
    if crlf:
        out = out.replace("\n", "\r\n")
    return ("\ufeff" if bom else "") + out


def to_vtt(cues: list[Cue], hours: bool = True, settings: str = "", note: str = "", tags: bool = False,
           title: str = "", ids: bool = False) -> str:
    out = ["WEBVTT" + (f" - {title}" if title else ""), ""]
    if note:
        out += [f"NOTE {note}", ""]
    for i, c in enumerate(cues, 1):
        text = c.text
        if tags:
            if i % 3 == 1:
                text = f"<i>{text}</i>"
            elif i % 3 == 2:
                words = text.split(" ")
                text = "<c.yellow>" + " ".join(words[:2]) + "</c> " + " ".join(words[2:])
        if ids:
            out.append(f"cue-{i}")
        out.append(f"{ts(c.start, '.', hours)} --> {ts(c.end, '.', hours)}" + (f" {settings}" if settings else ""))
        out += [text, ""]
    return "\n".join(out)


def to_json(cues: list[Cue], lang: str, leading_space: bool = False) -> str:
    pre = " " if leading_space else ""
    segs = [{"id": i, "start": round(c.start, 3), "end": round(c.end, 3), "text": pre + c.text}
            for i, c in enumerate(cues)]
    joiner = "" if lang == "zh" else " "
    return json.dumps({"language": lang, "text": joiner.join(c.text for c in cues), "segments": segs},
                      ensure_ascii=False, indent=1) + "\n"


def to_txt(cues: list[Cue], lang: str, one_per_line: bool = False) -> str:
    joiner = "\n" if one_per_line else ("" if lang == "zh" else " ")
    return joiner.join(c.text for c in cues) + "\n"

# ---------------------------------------------------------------------------------------
# The sample
# ---------------------------------------------------------------------------------------


@dataclass
class Source:
    name: str              # file stem (directory source) / id (manifest)
    where: str             # "dir" or "manifest"
    audio_lang: str        # language spoken
    lang: str              # language of the transcript
    expected: str
    kind: str
    note: str
    audio: str = ""        # path relative to sample/
    transcript: str | None = None
    inline_text: str | None = None
    extra_label: dict = field(default_factory=dict)
    extra_manifest: dict = field(default_factory=dict)
    duration: float | None = None
    origin: str = ""       # where the texts come from
    voice: str = ""
    text: str | None = None  # the transcript's text, cues joined


class Builder:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.pools = {lang: TextPool(lang) for lang in LANGS}
        self.sources: list[Source] = []
        self.manifest_lines: list[str | Source] = []

    # -- helpers ----------------------------------------------------------------------
    def rng(self, name: str) -> random.Random:
        return random.Random(f"{SEED}:{name}")

    def voice(self, lang: str, rng: random.Random, voice: str | None = None) -> tuple[str, int]:
        return voice or rng.choice(VOICES[lang]), rng.randint(150, 170)

    def paths(self, src: Source, ext: str, tr_ext: str | None) -> tuple[Path, Path | None]:
        if src.where == "dir":
            base = f"sources/{src.audio_lang}/{src.name}"
            audio = f"{base}.{ext}"
            tr = f"{base}.{src.lang}.{tr_ext}" if tr_ext else None
        else:
            audio = f"media/{src.name}.{ext}"
            tr = f"media/{src.name}.{tr_ext}" if tr_ext else None
        src.audio, src.transcript = audio, tr
        return HERE / audio, (HERE / tr if tr else None)

    def add(self, src: Source, samples: Samples | None, fmt: str, transcript: str | None, tr_ext: str | None,
            write_audio=None, cues: list[Cue] | None = None) -> Source:
        if src.inline_text is not None:
            src.text = src.inline_text
        elif cues is not None:
            src.text = ("" if src.lang == "zh" else " ").join(c.text for c in cues)
        audio_path, tr_path = self.paths(src, fmt, tr_ext if transcript is not None else None)
        if write_audio is not None:
            audio_path.parent.mkdir(parents=True, exist_ok=True)
            write_audio(audio_path)
        elif samples is not None:
            encode(samples, audio_path, fmt, self.tmp)
            src.duration = round(len(samples) / SR, 2)
        if tr_path is not None:
            tr_path.parent.mkdir(parents=True, exist_ok=True)
            tr_path.write_bytes(transcript.encode("utf-8"))
        self.sources.append(src)
        if src.where == "manifest":
            self.manifest_lines.append(src)
        return src

    def fortune_clip(self, lang: str, name: str, min_words=8, max_words=28, voice=None, n_texts=1):
        """Speech for `n_texts` fortunes of one language; cues per sentence."""
        rng = self.rng(name)
        texts, origins = [], []
        for _ in range(n_texts):
            t, o = self.pools[lang].take(min_words, max_words)
            texts.append(t)
            origins.append(o)
        sentences = [s for t in texts for s in split_sentences(t, lang)]
        v, speed = self.voice(lang, rng, voice)
        samples, cues = speak(sentences, v, speed, rng, self.tmp)
        return samples, cues, ", ".join(sorted(set(origins))), f"espeak-ng {v} {speed} wpm"

    def long_clip(self, lang: str, name: str, target: float, voice=None, lead: Samples | None = None):
        """Many fortunes with pauses between sentences, until the speech lasts `target` seconds."""
        rng = self.rng(name)
        v, speed = self.voice(lang, rng, voice)
        sentences, origins = [], set()
        total = 0.0
        while total < target:
            t, o = self.pools[lang].take(5, 30)
            origins.add(o)
            for s in split_sentences(t, lang):
                sentences.append(s)
                total += len(tts(s, v, speed, self.tmp)) / SR + 0.9
        samples, cues = speak(sentences, v, speed, rng, self.tmp, lead=lead)
        return samples, cues, ", ".join(sorted(origins)), f"espeak-ng {v} {speed} wpm"

    # -- the sources --------------------------------------------------------------------
    def build(self) -> None:
        self.clean_sources()
        self.long_sources()
        self.defect_sources()

    def clean(self, lang, name, where, fmt, tr_fmt, note="", voice=None, n_texts=1, **fmt_kw):
        samples, cues, origin, speaker = self.fortune_clip(lang, name, voice=voice, n_texts=n_texts)
        src = Source(name, where, lang, lang, "keep", "clean", note or f"clean {LANG_NAMES[lang]}, {fmt} + {tr_fmt}",
                     origin=origin, voice=speaker)
        if tr_fmt == "inline":
            src.inline_text = to_txt(cues, lang).strip()
            return self.add(src, samples, fmt, None, None)
        if tr_fmt == "txt":
            assert len(samples) / SR <= 30, name
        text = render(tr_fmt, cues, lang, **fmt_kw)
        return self.add(src, samples, fmt, text, tr_fmt, cues=cues)

    def clean_sources(self) -> None:
        # Real human speech.
        jfk = next((p for p in JFK_CANDIDATES if p.exists()), None)
        if jfk is None:
            sys.exit("jfk.opus / jfk.flac not found: " + ", ".join(map(str, JFK_CANDIDATES)))
        jfk_bytes = jfk.read_bytes()
        src = Source("jfk", "dir", "en", "en", "keep", "clean_real_speech",
                     "real human speech: J. F. Kennedy, inaugural address 1961 (public domain)",
                     origin="public domain (faster-whisper test data)", voice="J. F. Kennedy")
        cues = [Cue(*c) for c in JFK_CUES]

        def write_jfk(path: Path) -> None:
            if jfk.suffix == ".opus":
                path.write_bytes(jfk_bytes)
            else:
                run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(jfk), *ENCODE["opus"], *BITEXACT, str(path)])

        self.add(src, None, "opus", to_srt(cues), "srt", write_audio=write_jfk, cues=cues)
        src.duration = 11.0

        # Directory source: sources/<lang>/<stem>.<ext> + <stem>.<lang>.<fmt>
        self.clean("en", "en_mp3_vtt", "dir", "mp3", "vtt", hours=True)
        self.clean("de", "de_opus_srt", "dir", "opus", "srt")
        self.clean("de", "de_flac_txt", "dir", "flac", "txt", note="44.1 kHz stereo 24-bit FLAC, plain-text transcript")
        self.clean("es", "es_opus_vtt", "dir", "opus", "vtt", hours=False, note="WebVTT without hours (MM:SS.mmm)")
        self.clean("es", "es_webm_srt", "dir", "webm", "srt")
        self.clean("it", "it_opus_json", "dir", "opus", "json", leading_space=True,
                   note="Whisper-style JSON with openai-whisper's leading spaces")
        self.clean("it", "it_wav8k_txt", "dir", "wav", "txt", one_per_line=True, note="8 kHz 16-bit WAV, one sentence per line")
        self.clean("ru", "ru_opus_srt", "dir", "opus", "srt", crlf=True, bom=True, note="SRT with UTF-8 BOM and CRLF line ends")
        self.clean("ru", "ru_m4a_vtt", "dir", "m4a", "vtt", hours=True)
        self.clean("pt", "pt_opus_vtt", "dir", "opus", "vtt", hours=True, ids=True, note="WebVTT with cue identifiers")
        self.clean("pt", "pt_mp3_srt", "dir", "mp3", "srt", wrap=40, note="SRT with two-line cues")
        self.clean("pl", "pl_opus_srt", "dir", "opus", "srt")
        self.clean("pl", "pl_opus_json", "dir", "opus", "json")
        self.clean("zh", "zh_opus_srt", "dir", "opus", "srt", n_texts=2)
        self.clean("zh", "zh_opus_txt", "dir", "opus", "txt", n_texts=2)

        # Manifest source: media/<id>.<ext>
        self.clean("en", "en-inline-m4a", "manifest", "m4a", "inline", note="inline transcript in the manifest")
        self.clean("en", "en-webm-json", "manifest", "webm", "json")
        self.clean("de", "de-inline", "manifest", "opus", "inline")
        self.clean("es", "es-video-mp4", "manifest", "mp4", "srt", note="MP4 with a tiny video track plus AAC audio")
        self.clean("es", "es-inline", "manifest", "opus", "inline")
        self.clean("it", "it-vtt", "manifest", "opus", "vtt", hours=True, title="Proverbi")
        self.clean("it", "it-inline", "manifest", "opus", "inline")
        self.clean("ru", "ru-inline", "manifest", "opus", "inline")
        self.clean("ru", "ru-json", "manifest", "opus", "json")
        self.clean("pt", "pt-json", "manifest", "opus", "json")
        self.clean("pt", "pt-inline", "manifest", "opus", "inline")
        self.clean("pl", "pl-txt", "manifest", "opus", "txt")
        self.clean("pl", "pl-inline", "manifest", "opus", "inline")
        self.clean("zh", "zh-vtt", "manifest", "opus", "vtt", hours=False, n_texts=2)

    def long_sources(self) -> None:
        # Long English, SRT, directory source.
        samples, cues, origin, speaker = self.long_clip("en", "en_long", 82)
        self.add(Source("en_long", "dir", "en", "en", "keep", "clean_long",
                        "long recording, many sentences with pauses, timed SRT cues over several 30 s windows",
                        origin=origin, voice=speaker), samples, "opus", to_srt(cues), "srt", cues=cues)
        # Long German, WebVTT with cue settings, a NOTE block and <i>/<c> tags, manifest source.
        samples, cues, origin, speaker = self.long_clip("de", "de-long-vtt", 70)
        text = to_vtt(cues, hours=True, settings="align:start position:10%", tags=True,
                      note="Deutsche Sprichwörter und Zitate, gesprochen von espeak-ng.\nZeiten in Sekunden genau.")
        self.add(Source("de-long-vtt", "manifest", "de", "de", "keep", "clean_long",
                        "long recording; WebVTT with cue settings, a NOTE block, `<i>` and `<c>` tags",
                        origin=origin, voice=speaker), samples, "opus", text, "vtt", cues=cues)
        # Long Chinese, SRT, manifest source.
        samples, cues, origin, speaker = self.long_clip("zh", "zh-long-srt", 64)
        self.add(Source("zh-long-srt", "manifest", "zh", "zh", "keep", "clean_long", "long Chinese recording, SRT",
                        origin=origin, voice=speaker), samples, "opus", to_srt(cues), "srt", cues=cues)
        # Long recording whose speech starts after ~38 s of low noise: language ID must look past the first window.
        lang = LEAD_NOISE_LANG
        rng = self.rng("lead-noise")
        lead = noise(38.0, rng, 25.0)
        samples, cues, origin, speaker = self.long_clip(lang, f"{lang}-long-lead-noise", 40, lead=lead)
        self.add(Source(f"{lang}-long-lead-noise", "manifest", lang, lang, "keep", "clean_long_leading_noise",
                        "speech starts after 38 s of low noise (about -62 dBFS): audio language ID must look beyond the first 30 s",
                        origin=origin, voice=speaker), samples, "opus", to_json(cues, lang), "json", cues=cues)

    def defect_sources(self) -> None:
        P = self.pools

        # --- casing and punctuation -------------------------------------------------------
        for name, where in [("en_shouting_01", "dir"), ("en-shouting-02", "manifest")]:
            samples, cues, origin, speaker = self.fortune_clip("en", name)
            up = [Cue(c.start, c.end, c.text.upper()) for c in cues]
            src = Source(name, where, "en", "en", "all_uppercase", "planted_defect", "transcript in all capitals",
                         origin=origin, voice=speaker)
            if where == "dir":
                self.add(src, samples, "opus", to_srt(up), "srt", cues=up)
            else:
                src.inline_text = to_txt(up, "en").strip()
                self.add(src, samples, "opus", None, None)
        for name, where, fmt in [("en_lowercase_01", "dir", "txt"), ("en-lowercase-02", "manifest", "vtt")]:
            samples, cues, origin, speaker = self.fortune_clip("en", name)
            low = [Cue(c.start, c.end, strip_punct(c.text).lower()) for c in cues]
            src = Source(name, where, "en", "en", "all_lowercase", "planted_defect",
                         "transcript all lower case, no punctuation", origin=origin, voice=speaker)
            self.add(src, samples, "opus", render(fmt, low, "en"), fmt, cues=low)
        samples, cues, origin, speaker = self.fortune_clip("en", "en-no-punctuation", n_texts=3, max_words=22)
        bare = [Cue(c.start, c.end, strip_punct(c.text)) for c in cues]
        self.add(Source("en-no-punctuation", "manifest", "en", "en", "missing_punctuation", "planted_defect",
                        "properly cased but without any punctuation", origin=origin, voice=speaker),
                 samples, "opus", to_srt(bare), "srt", cues=bare)

        # --- translate: foreign speech, faithful English transcript ------------------------
        for i, lang in enumerate(TRANSLATE_LANGS):
            name = f"{lang}_to_en_{i + 1:02d}" if i == 0 else f"{lang}-to-en-{i + 1:02d}"
            where = "dir" if i == 0 else "manifest"
            rng = self.rng(name)
            v, speed = self.voice(lang, rng)
            pairs = TRANSLATIONS[lang]
            samples, cues = speak([p[0] for p in pairs], v, speed, rng, self.tmp)
            en = [Cue(c.start, c.end, p[1]) for c, p in zip(cues, pairs, strict=True)]
            src = Source(name, where, lang, "en", "translate", "planted_translation",
                         f"{LANG_NAMES[lang]} speech with a faithful English translation as transcript: an X->en example",
                         origin="written for this sample", voice=f"espeak-ng {v} {speed} wpm",
                         extra_label={"foreign_text": " ".join(p[0] for p in pairs)})
            fmt = ["srt", "vtt", "json"][i % 3]
            self.add(src, samples, "opus", render(fmt, en, "en"), fmt, cues=en)

        # --- language mismatch: English speech, transcript in another language (not a translation)
        for name, where, tlang in [("en_with_de_text", "dir", "de"), ("en-with-ru-text", "manifest", "ru")]:
            samples, cues, origin, speaker = self.fortune_clip("en", name)
            other, other_origin = P[tlang].take(6, 24)
            wrong = [Cue(cues[0].start, cues[-1].end, other)]
            src = Source(name, where, "en", tlang, "language_mismatch", "planted_defect",
                         f"English speech, {LANG_NAMES[tlang]} transcript of an unrelated text",
                         origin=f"{origin}; transcript {other_origin}", voice=speaker,
                         extra_label={"spoken_text": " ".join(c.text for c in cues)})
            self.add(src, samples, "opus", to_srt(wrong), "srt", cues=wrong)

        # --- near duplicates ---------------------------------------------------------------
        base, origin = P["en"].take(24, 34)
        variants = [
            ("en_dup1_a", "dir", base, "en-us", "opus", "srt"),
            ("en-dup1-b", "manifest", change_one_word(base, "en"), "en-gb+f2", "opus", "inline"),
            ("en-dup1-c", "manifest", add_comma(base), "en-us+m5", "mp3", "vtt"),
        ]
        self.duplicates("dup1", "en", variants, origin)
        base, origin = P["de"].take(18, 30)
        variants = [
            ("de_dup2_a", "dir", base, "de+m4", "opus", "srt"),
            ("de-dup2-b", "manifest", remove_comma(base) if "," in base else change_one_word(base, "de"),
             "de+f3", "opus", "vtt"),
        ]
        self.duplicates("dup2", "de", variants, origin)

        # --- repetition loop and non-speech markers ---------------------------------------
        samples, cues, origin, speaker = self.fortune_clip("en", "en-repetition-loop", max_words=14)
        one = to_txt(cues, "en").strip()
        src = Source("en-repetition-loop", "manifest", "en", "en", "repetitive_text", "planted_defect",
                     "the spoken text once in the audio, ten times in a row in the transcript (a decoding loop)",
                     origin=origin, voice=speaker)
        src.inline_text = " ".join([one] * 10)
        self.add(src, samples, "opus", None, None)

        rng = self.rng("en_music_markers")
        v, speed = self.voice("en", rng, "en-us+f3")
        speech = tts("Thank you all for coming.", v, speed, self.tmp)
        tune1, tune2 = music(8.0, rng), music(4.0, rng)
        applause = array.array("h", (int(x * (1 - i / SR / 1.5)) for i, x in enumerate(noise(1.5, rng, 2500.0))))
        samples = array.array("h", tune1)
        t_speech = len(samples) / SR + 0.4
        samples.extend(silence(0.4))
        samples.extend(speech)
        t_speech_end = len(samples) / SR
        samples.extend(silence(0.4))
        t_music2 = len(samples) / SR
        samples.extend(tune2)
        t_applause = len(samples) / SR
        samples.extend(applause)
        samples.extend(silence(0.3))
        end = len(samples) / SR
        cues = [Cue(0.0, 4.0, "[Music]"), Cue(4.0, 8.0, "[Music]"), Cue(t_speech, t_speech_end, "Thank you all for coming."),
                Cue(t_music2, t_music2 + 2.0, "[Music]"), Cue(t_music2 + 2.0, t_applause, "[Music]"),
                Cue(t_applause, end - 0.3, "[Applause]")]
        self.add(Source("en_music_markers", "dir", "en", "en", "mostly_non_speech_markers", "planted_defect",
                        "synthetic music and noise; the transcript is mostly `[Music]` / `[Applause]` markers",
                        origin="written for this sample", voice=f"espeak-ng {v} {speed} wpm + synthetic tones"),
                 samples, "opus", to_srt(cues), "srt", cues=cues)

        # --- empty transcripts, missing transcript, untimed long transcript -----------------
        samples, cues, origin, speaker = self.fortune_clip("en", "en_empty_transcript")
        self.add(Source("en_empty_transcript", "dir", "en", "en", "empty_transcript", "planted_defect",
                        "zero-byte transcript file", origin=origin, voice=speaker), samples, "opus", "", "srt", cues=[])
        samples, cues, origin, speaker = self.fortune_clip("it", "it-whitespace-transcript")
        self.add(Source("it-whitespace-transcript", "manifest", "it", "it", "empty_transcript", "planted_defect",
                        "transcript file holding only spaces, tabs and newlines", origin=origin, voice=speaker),
                 samples, "opus", "  \n\t\n   \n", "txt", cues=[])
        samples, cues, origin, speaker = self.fortune_clip("pl", "pl_no_transcript")
        self.add(Source("pl_no_transcript", "dir", "pl", "pl", "missing_transcript", "planted_defect",
                        "audio file with no transcript beside it", origin=origin, voice=speaker), samples, "opus", None, None)
        samples, cues, origin, speaker = self.untimed_long("pt", "pt_untimed_long")
        src = Source("pt_untimed_long", "dir", "pt", "pt", "untimed_transcript_too_long", "planted_defect",
                     f"plain-text (untimed) transcript for a {len(samples) / SR:.0f} s recording: cannot be cut into 30 s windows",
                     origin=origin, voice=speaker)
        self.add(src, samples, "opus", to_txt(cues, "pt"), "txt", cues=cues)

        # --- broken audio --------------------------------------------------------------------
        rng = self.rng("broken")
        text_for = lambda lang: P[lang].take(6, 20)  # noqa: E731
        t, o = text_for("en")
        src = Source("en_random_bytes", "dir", "en", "en", "bad_audio", "planted_defect",
                     "random bytes saved as .mp3", origin=o)
        self.add(src, None, "mp3", to_srt([Cue(0.5, 4.0, t)]), "srt",
                 write_audio=lambda p: p.write_bytes(rng.randbytes(24_000)), cues=[Cue(0.5, 4.0, t)])
        samples, cues, o, speaker = self.fortune_clip("de", "de_truncated")
        full = self.tmp / "full.opus"
        encode(samples, full, "opus", self.tmp)
        head = full.read_bytes()[:300]
        src = Source("de_truncated", "dir", "de", "de", "bad_audio", "planted_defect",
                     "truncated download: the first 300 bytes of an Ogg Opus file", origin=o, voice=speaker)
        self.add(src, None, "opus", to_vtt(cues), "vtt", write_audio=lambda p: p.write_bytes(head), cues=cues)
        t, o = text_for("es")
        src = Source("es-zero-bytes", "manifest", "es", "es", "bad_audio", "planted_defect", "zero-byte .wav", origin=o)
        src.inline_text = t
        self.add(src, None, "wav", None, None, write_audio=lambda p: p.write_bytes(b""))
        t, o = text_for("en")
        src = Source("en-html-error-page", "manifest", "en", "en", "bad_audio", "planted_defect",
                     "an HTTP error page saved under an .mp3 name", origin=o)
        self.add(src, None, "mp3", to_srt([Cue(0.4, 3.9, t)]), "srt", write_audio=lambda p: p.write_bytes(HTML_ERROR),
                 cues=[Cue(0.4, 3.9, t)])
        t, o = text_for("ru")
        src = Source("ru-video-no-audio", "manifest", "ru", "ru", "no_audio_stream", "planted_defect",
                     "MP4 with a video track and no audio stream", origin=o)
        self.add(src, None, "mp4", to_srt([Cue(0.5, 5.0, t)]), "srt", write_audio=lambda p: video_only(p, 6.0),
                 cues=[Cue(0.5, 5.0, t)])

        # --- manifest-level defects ------------------------------------------------------------
        samples, cues, origin, speaker = self.fortune_clip("en", "en-auto-captions")
        src = Source("en-auto-captions", "manifest", "en", "en", "machine_generated_captions", "planted_defect",
                     "manifest says transcript_origin = automatic_captions", origin=origin, voice=speaker,
                     extra_manifest={"transcript_origin": "automatic_captions"})
        self.add(src, samples, "opus", to_vtt(cues, hours=True), "vtt", cues=cues)
        # A malformed manifest line (inserted in the middle of the manifest by write_manifest).
        self.manifest_lines.insert(len(self.manifest_lines) // 2, BROKEN_MANIFEST_LINE)

    def duplicates(self, group, lang, variants, origin):
        for name, where, text, voice, fmt, tr_fmt in variants:
            rng = self.rng(name)
            v, speed = self.voice(lang, rng, voice)
            samples, cues = speak(split_sentences(text, lang), v, speed, rng, self.tmp)
            src = Source(name, where, lang, lang, "duplicate", "planted_near_duplicate",
                         f"near-duplicate group {group}: same text with a tiny edit, different voice; exactly one member is kept",
                         origin=origin, voice=f"espeak-ng {v} {speed} wpm", extra_label={"duplicate_group": group})
            if tr_fmt == "inline":
                src.inline_text = text
                self.add(src, samples, fmt, None, None)
            else:
                self.add(src, samples, fmt, render(tr_fmt, cues, lang), tr_fmt, cues=cues)

    def untimed_long(self, lang, name):
        """40-45 s of speech (several fortunes) for a plain-text transcript."""
        rng = self.rng(name)
        v, speed = self.voice(lang, rng)
        sentences, origins, total = [], set(), 0.0
        while total < 40.5:
            t, o = self.pools[lang].take(5, 30)
            parts = split_sentences(t, lang)
            dur = sum(len(tts(s, v, speed, self.tmp)) / SR + 0.9 for s in parts)
            if total + dur > 43.5:
                continue
            sentences += parts
            origins.add(o)
            total += dur
        samples, cues = speak(sentences, v, speed, rng, self.tmp)
        assert 40 <= len(samples) / SR <= 45, len(samples) / SR
        return samples, cues, ", ".join(sorted(origins)), f"espeak-ng {v} {speed} wpm"

    # -- output ---------------------------------------------------------------------------
    def write_manifest(self) -> dict[str, int]:
        lines, numbers = [], {}
        for n, item in enumerate(self.manifest_lines, 1):
            if isinstance(item, str):
                lines.append(item)
                numbers[item] = n
                continue
            entry = {"id": item.name, "audio": item.audio}
            if item.inline_text is not None:
                entry["text"] = item.inline_text
            elif item.transcript:
                entry["transcript"] = item.transcript
            entry["language"] = item.lang
            entry["title"] = title_for(item)
            entry["speaker"] = item.voice or "unknown"
            entry["license"] = license_for(item)
            entry["text_source"] = item.origin
            entry.update(item.extra_manifest)
            lines.append(json.dumps(entry, ensure_ascii=False))
            numbers[item.name] = n
        (HERE / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return numbers

    def write_labels(self, numbers: dict[str, int]) -> list[dict]:
        labels = []
        for s in self.sources:
            lab = {"audio": s.audio, "id": s.name if s.where == "manifest" else None,
                   "source": "directory" if s.where == "dir" else "manifest",
                   "transcript": s.transcript if s.inline_text is None else None,
                   "language": s.lang, "audio_language": s.audio_lang, "expected": s.expected, "kind": s.kind}
            if s.where == "manifest":
                lab["manifest_line"] = numbers[s.name]
            if s.duration is not None:
                lab["duration_s"] = s.duration
            lab["text"] = s.text
            lab["text_source"] = s.origin
            lab["speaker"] = s.voice
            lab.update(s.extra_label)
            lab["note"] = s.note
            labels.append(lab)
        labels.append({"audio": None, "id": None, "source": "manifest", "transcript": None, "language": None,
                       "audio_language": None, "expected": "bad_manifest_line", "kind": "planted_defect",
                       "manifest_line": numbers[BROKEN_MANIFEST_LINE],
                       "note": "a manifest line that is not valid JSON (truncated write)"})
        with open(HERE / "labels.jsonl", "w", encoding="utf-8") as f:
            for lab in labels:
                f.write(json.dumps(lab, ensure_ascii=False) + "\n")
        return labels


HTML_ERROR = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>503 Service Unavailable</title></head>
<body>
<h1>Service Unavailable</h1>
<p>The server is temporarily unable to service your request due to maintenance downtime or capacity problems.
Please try again later.</p>
<hr><address>Apache Server at media.example.org Port 443</address>
</body>
</html>
"""
BROKEN_MANIFEST_LINE = '{"id": "en-broken-line", "audio": "media/en-broken-line.opus", "text": "This line was cut off in the mid'


def strip_punct(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s'-]", "", text)).strip()


SWAPS = {
    "en": [("the", "this"), ("is", "was"), ("will", "would"), ("can", "could"), ("a", "one"), ("and", "but")],
    "de": [("ist", "war"), ("die", "diese"), ("der", "dieser"), ("und", "oder"), ("nicht", "nie")],
}


def change_one_word(text: str, lang: str) -> str:
    """A one-word edit: the first word of the text found in a short list of swaps."""
    words = text.split(" ")
    for old, new in SWAPS[lang]:
        for i, w in enumerate(words):
            if w == old:
                words[i] = new
                return " ".join(words)
    raise ValueError(f"no word to swap in {text!r}")


def add_comma(text: str) -> str:
    words = text.split(" ")
    i = next(i for i in range(3, len(words) - 2) if words[i].isalpha() and words[i + 1].isalpha())
    words[i] += ","
    return " ".join(words)


def remove_comma(text: str) -> str:
    return text.replace(",", "", 1)


def render(fmt: str, cues: list[Cue], lang: str, **kw) -> str:
    if fmt == "srt":
        return to_srt(cues, **kw)
    if fmt == "vtt":
        return to_vtt(cues, **kw)
    if fmt == "json":
        return to_json(cues, lang, **kw)
    if fmt == "txt":
        return to_txt(cues, lang, **kw)
    raise ValueError(fmt)


def title_for(s: Source) -> str:
    return f"{LANG_NAMES[s.audio_lang]} sample {s.name}"


def license_for(s: Source) -> str:
    if s.name == "jfk":
        return "public domain"
    if "written for this sample" in s.origin:
        return "MIT (wspsr)"
    return "text: Debian fortune packages (see README); audio: generated"


def readme(labels: list[dict], size: int) -> str:
    from collections import Counter
    by_lang = Counter(lab["audio_language"] for lab in labels if lab["audio_language"])
    keep_by_lang = Counter(lab["audio_language"] for lab in labels if lab["expected"] == "keep")
    by_expected = Counter(lab["expected"] for lab in labels)
    rows = ["| # | source | audio | transcript | lang (text / audio) | duration | expected | note |",
            "|---|---|---|---|---|---|---|---|"]
    for i, lab in enumerate(labels, 1):
        where = f"manifest line {lab['manifest_line']}" if lab.get("manifest_line") else "directory"
        tr = lab["transcript"] or ("inline text" if lab["source"] == "manifest" and lab["audio"] else "-")
        if lab["expected"] == "missing_transcript":
            tr = "none"
        dur = f"{lab['duration_s']:.1f} s" if lab.get("duration_s") else "-"
        exp = lab["expected"] + (f" [{lab['duplicate_group']}]" if lab.get("duplicate_group") else "")
        langs = f"{lab['language']} / {lab['audio_language']}" if lab["language"] else "-"
        rows.append(f"| {i} | {where} | `{lab['audio'] or '-'}` | {('`' + tr + '`') if '/' in tr else tr} | {langs} "
                    f"| {dur} | {exp} | {lab['note'].replace('|', '/')} |")
    lang_rows = "\n".join(f"| {lang} | {LANG_NAMES[lang]} | {by_lang[lang]} | {keep_by_lang[lang]} | {', '.join(VOICES[lang])} |"
                          for lang in LANGS)
    longs = [lab["duration_s"] for lab in labels if lab["kind"].startswith("clean_long")]
    exp_rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(by_expected.items(), key=lambda kv: (-kv[1], kv[0])))
    return README_TEMPLATE.format(n=len(labels), size=size / 1e6, lang_rows=lang_rows, exp_rows=exp_rows,
                                  table="\n".join(rows), seed=SEED, translate=", ".join(TRANSLATE_LANGS),
                                  lead=f"media/{LEAD_NOISE_LANG}-long-lead-noise.opus",
                                  long_range=f"{min(longs):.0f}-{max(longs):.0f} s")


README_TEMPLATE = """# wspsr sample corpus

A small, fully labelled corpus of audio + transcript pairs that `make corpus` runs on: {n} sources
in 8 languages ({size:.1f} MB). Most are clean and should be kept; the others carry one planted
defect each, and `labels.jsonl` says what the pipeline should do with every source.

**Generated by `generate.py`** (committed output; nothing here runs at pipeline time). To regenerate:

```sh
sudo apt-get install espeak-ng ffmpeg fortunes fortunes-de fortunes-es fortunes-it \\
    fortunes-ru fortunes-br fortunes-pl fortunes-zh
python3 sample/generate.py
```

It uses only the Python standard library. Texts, cue times and labels are deterministic (seed {seed});
encoded audio bytes can differ slightly between espeak-ng / ffmpeg versions.

## Layout

| path | what |
|---|---|
| `sources/<lang>/<stem>.<audio ext>` + `<stem>.<lang>.<srt/vtt/json/txt>` | directory source: searched recursively, audio and transcript pair by stem; the transcript's language is the suffix before its extension |
| `manifest.jsonl` + `media/` | manifest source: one JSON object per line, `id`, `audio`, then `transcript` (a file) or `text` (inline), `language` (the transcript's), metadata (`title`, `speaker`, `license`, `transcript_origin`); paths are relative to the manifest's folder |
| `labels.jsonl` | one line per source (and one for the malformed manifest line): `audio`, `id`, `transcript`, `language` (transcript), `audio_language` (spoken), `expected`, `kind`, `manifest_line`, `duplicate_group`, `duration_s`, `note` |
| `generate.py` | the generator |
| `measure_lid.py` | a check, not part of the pipeline: Whisper base's language ID on every clip (the table below) |

`expected` is one of: `keep`, `translate` (foreign speech with a faithful English transcript: an X->en
example whose language is the audio's), `duplicate` (every member of a near-duplicate group carries it and
its `duplicate_group`; the pipeline keeps exactly one member per group), or the reason a source is dropped.

Audio: mostly Ogg Opus mono at 24 kbit/s; also MP3, AAC in .m4a, Opus in .webm, 44.1 kHz stereo 24-bit FLAC,
8 kHz WAV, and an MP4 with a 64x36 2 fps video track. Transcripts: SRT (one with a BOM and CRLF, one with
two-line cues), WebVTT (with and without hours, cue identifiers, a title, cue settings, a NOTE block, `<i>`
and `<c>` tags), Whisper-style JSON (`segments` with `start`/`end`/`text`), plain text (only for audio
of 30 s or less, except the planted `untimed_transcript_too_long`), and inline text in the manifest.
Cue times of synthetic speech are exact: each sentence is synthesised separately, its silence trimmed,
and the clips are joined with 0.3-1.5 s pauses (0.2-0.6 s padding at both ends).

Four long recordings ({long_range}) span several 30 s windows; one starts with 38 s of low noise, so
audio language ID has to look beyond the first window.

`sources/mixed/` (made by `real_speech.py`, which `generate.py` runs last) holds three sources built from the
real Kennedy recording: `jfk_then_spanish` switches language (11 s of Kennedy, then Spanish read speech from
31 s, one timed transcript without a language suffix): it is kept with its first window `en` and its second
`es`, and marked `code_switched`; `jfk_other_passage` pairs the recording with the transcript of another passage
of the same address (plausible timing and speaking rate, other words): it is rejected `misaligned_transcript` by
the per-window transcript agreement; `jfk_reupload` is the recording uploaded again (2 s cut at the start, 22.05 kHz
MP3) with condensed captions, which text dedup cannot match: audio dedup finds it, and finds `sources/en/jfk.opus`
inside `jfk_then_spanish` too, so both are rejected `audio_duplicate` for that longer recording.

## Sources per language

| code | language | sources | expected keep | espeak-ng voices |
|---|---|---|---|---|
{lang_rows}

## Sources per expected outcome

| expected | sources |
|---|---|
{exp_rows}

## Whisper base language ID on this sample

Measured with `measure_lid.py` (faster-whisper 1.2.1, Whisper base in CTranslate2 int8 on CPU, one
30 s window: the first, or the first with speech for the lead-noise recording). p = the probability
Whisper base gives to the language actually spoken; top-1 = how often that language ranks first.

| language | clips | median p(spoken language) | top-1 | median rank |
|---|---|---|---|---|
| es | 6 | 0.88 | 6/6 | 1 |
| en (JFK: 0.94) | 19 | 0.87 | 19/19 | 1 |
| zh | 4 | 0.83 | 4/4 | 1 |
| pl | 6 | 0.83 | 6/6 | 1 |
| de | 7 | 0.81 | 7/7 | 1 |
| it | 5 | 0.55 | 5/5 | 1 |
| ru | 4 | 0.15 | 2/4 | 2 |
| pt | 5 | 0.01 | 1/5 | 11 |

Chinese uses espeak-ng's `cmn-latn-pinyin` voice: the plain `cmn` voice of espeak-ng 1.51 reads the tone
digits of its pinyin aloud in English, and Whisper base heard that as English (p(zh) = 0.01).

So the `translate` sources use three of the foreign languages Whisper base recognises best from espeak-ng
(`{translate}`), and the language-mismatch sources use English speech. The lead-noise recording
(`{lead}`) scores 0.01 for Spanish on its first window (noise only) and 0.88 on the second. These are
properties of synthetic speech and a small model: the pipeline's thresholds must not be tuned to them.

## Origin and licences

* **Texts** are short human-written quotations, proverbs and jokes from Debian's fortune packages:
  `fortunes` (fortune-mod; BSD licence), `fortunes-de` (GPL-2+), `fortunes-es` (GPL-2+; the
  quotes are presumed public domain), `fortunes-it` (public domain), `fortunes-ru` (GPL-2),
  `fortunes-br` (GPL-2+), `fortunes-pl` (GPL-2+), `fortunes-zh` (GPL-3+; only the folk proverbs, 《谚语》, are used).
  Each source's fortune file is named in `labels.jsonl` (`text_source`, also in the manifest); attributions
  ("-- Author") are stripped. Only clean, punctuated entries are used (no dialogue, verse, quotes,
  acronyms or digits).
* **The translation pairs** (foreign sentence + English translation) and the short phrase in the music
  clip were written for this sample.
* **`sources/en/jfk.opus`**: J. F. Kennedy's inaugural address (1961), public domain; the recording
  comes from faster-whisper's test data, re-encoded to Opus.
* **The Spanish read clips in `sources/mixed/jfk_then_spanish.opus`** come from the pytest-audioeval package
  (0.1.3, MIT licence; `tests/data/speech/`).
* **Speech** is synthesised with espeak-ng (the program is GPL-3+; the licence does not extend to the audio it
  produces).

## Sources

{table}
"""


def main() -> None:
    for tool in ["espeak-ng", "ffmpeg", "ffprobe"]:
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install espeak-ng ffmpeg fortunes fortunes-de ...")
    for lang in LANGS:
        for rel in FORTUNE_FILES[lang]:
            if not fortune_file(rel).exists():
                sys.exit(f"missing {fortune_file(rel)}: install the fortunes packages (see README)")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        # Keep the committed JFK recording (the shared data folder may not exist on this machine).
        jfk_keep = tmp / "jfk.opus"
        if JFK_CANDIDATES[0].exists():
            shutil.copy(JFK_CANDIDATES[0], jfk_keep)
            JFK_CANDIDATES.insert(0, jfk_keep)
        for sub in ["sources", "media"]:
            shutil.rmtree(HERE / sub, ignore_errors=True)
        b = Builder(tmp)
        b.build()
        numbers = b.write_manifest()
        labels = b.write_labels(numbers)
    import real_speech  # the sources made of real speech around the Kennedy recording (sources/mixed/)

    real_speech.main()
    labels = [json.loads(line) for line in (HERE / "labels.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    size = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file() and p.name != "README.md")
    (HERE / "README.md").write_text(readme(labels, size), encoding="utf-8")
    summary(labels, b.pools, size)


def summary(labels, pools, size) -> None:
    from collections import Counter
    print(f"{len(labels)} labelled sources, {size / 1e6:.2f} MB")
    print("fortune candidates left per language:", {k: len(p.items) for k, p in pools.items()},
          "of", {k: p.available for k, p in pools.items()})
    print("per audio language:", dict(Counter(lab["audio_language"] for lab in labels)))
    print("per expected:", dict(Counter(lab["expected"] for lab in labels)))


if __name__ == "__main__":
    main()
