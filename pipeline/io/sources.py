"""Finding sources: audio paired with a transcript, from directories (pairing by file stem) or JSONL manifests.

Every file or line that does not make a usable pair is returned as a reject, so it is counted like any source.
Ids are derived from paths relative to the root the user named (never from absolute paths, clocks or random
numbers): the same data gives the same ids on any machine. Each row also gets a ``key``, its identity across runs:
a hash of its id and of what it is now (its files' sizes and modification times, a manifest line's content), so a
rerun recognises committed work by what a source is, whatever else was added, removed or reordered, and a file that
changed is a new source.

At scale discovery is split (``plan_splits``: a split per manifest file, and per top-level sub-folder of a
folder tree, since pairing never crosses folders) and each split is read by a task (``read_split``), which yields
its rows in blocks: nothing per source stays with the caller. Every row gets a ``ref``, its split's index and its
position in the split: it orders the rows of one run (the first of two sources with one id wins) and is their handle
in the global steps; committed work is named by ``key``. ``discover_sources`` does the same in this process, for
small inputs. Only regular files are paired: a named pipe, socket or device is refused without being opened.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterator

import pyarrow as pa

from pipeline.io import storage
from pipeline.io.commit import committed_files
from pipeline.io.transcripts import FORMAT_BY_SUFFIX
from pipeline.schema import STREAM_COLUMNS, RejectReason, RejectScope

AUDIO_SUFFIXES = frozenset(
    ".wav .flac .mp3 .ogg .opus .oga .m4a .aac .webm .mp4 .mkv .mka .mov .wma .aif .aiff .w64 .amr".split()
)
TRANSCRIPT_SUFFIXES = frozenset(FORMAT_BY_SUFFIX)
# When one audio file has several transcripts in the same language, the first format here wins.
FORMAT_PREFERENCE = (".json", ".srt", ".vtt", ".txt")
RESERVED_KEYS = frozenset({"id", "audio", "transcript", "text", "language", "encoding", "transcript_origin"})
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}([-_][a-z0-9]{2,8})*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class SourceOptions:
    default_language: str | None = None  # for sources whose language nothing else declares
    allowed_roots: tuple[str, ...] = ()  # extra folders that manifest paths may point into
    manifest_split_mb: float = 8.0  # a plain manifest is read by one task per this many MB (gzip: one task per file)

    def __post_init__(self) -> None:
        if self.manifest_split_mb <= 0:
            raise ValueError("manifest_split_mb must be positive")


@dataclass
class Discovery:
    sources: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, source_id: str, source: str, reason: RejectReason, detail: str, version: str = "") -> None:
        self.rejects.append(discovery_reject(source_id, source, reason, detail, version))


def discovery_reject(source_id: str, source: str, reason: RejectReason, detail: str, version: str = "", key: int | None = None) -> dict[str, Any]:
    return {
        "source_id": source_id,
        "source": source,
        "scope": RejectScope.SOURCE.value,
        "stage": "discover_sources",
        "reason": reason.value,
        "detail": detail,
        "key": source_key(source_id, version) if key is None else key,
    }


def stable_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def source_key(source_id: str, version: str) -> int:
    """A discovered row's identity across runs as a signed 64-bit integer (8 bytes a source wherever committed work
    is compared): its id and its ``version``, what the source is now."""
    digest = hashlib.sha256(f"{source_id}\x1f{version}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


NOT_REGULAR = "not-regular"


def file_version(path: str | os.PathLike) -> str:
    """A local file's size and modification time (``missing`` when it cannot be read, ``not-regular:KIND`` for a
    pipe, socket, device or folder)."""
    try:
        found = os.stat(path)
    except (OSError, ValueError):
        return "missing"
    if not stat.S_ISREG(found.st_mode):
        return f"{NOT_REGULAR}:{_kind_of_mode(found.st_mode)}"
    return f"{found.st_size}:{found.st_mtime_ns}"


def _kind_of_mode(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def not_regular(version: str) -> str | None:
    """What a ``file_version`` says the path is when it is not a regular file (None for a file or a missing one)."""
    return version.split(":", 1)[1] if version.startswith(NOT_REGULAR) else None


def _info_version(entry: "storage.pafs.FileInfo") -> str:
    mtime = entry.mtime_ns if entry.mtime_ns is not None else ""
    return f"{entry.size}:{mtime}"


def _is_under(path: Path, roots: list[Path]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == root or root in real.parents for root in roots)


def _language_suffix(stem: str) -> tuple[str, str | None]:
    """``talk.de`` -> (``talk``, ``de``): subtitle files conventionally carry their language before the extension."""
    base, dot, tail = stem.rpartition(".")
    if dot and base and _LANGUAGE.match(tail.lower()):
        return base, tail.lower()
    return stem, None


def _walk(root: Path) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(directory) / name


def _directory_files(root_spelled: str) -> tuple[str, dict[str, str]]:
    """The folder's label (its last name: ids do not depend on where it is) and its files as relative POSIX paths,
    each with its version (``file_version``)."""
    if storage.is_uri(root_spelled):
        return posixpath.basename(root_spelled.rstrip("/")), _remote_files(root_spelled, recursive=True)
    root = Path(root_spelled)
    return root.resolve().name, {path.relative_to(root).as_posix(): file_version(path) for path in _walk(root)}


def _remote_files(root_spelled: str, recursive: bool) -> dict[str, str]:
    """The files under a prefix (not hidden), relative, with the size and time the listing gives: no call per file."""
    filesystem, root = storage.resolve(root_spelled)
    found = filesystem.get_file_info(storage.pafs.FileSelector(root, recursive=recursive, allow_not_found=True))
    files = {}
    for entry in found:
        if entry.type != storage.pafs.FileType.File:
            continue
        relative = posixpath.relpath(entry.path, root)
        if not any(part.startswith(".") for part in relative.split("/")):
            files[relative] = _info_version(entry)
    return dict(sorted(files.items()))


def pair_files(root_spelled: str, label: str, files: dict[str, str], options: SourceOptions, out: Discovery) -> None:
    """Audio and transcripts among ``files`` (paths under the root, each with its ``file_version``) paired by folder
    and stem, in a local folder or under an object-store prefix (``s3://bucket/prefix``): the same files give the same
    ids in either place. A pair that is not two regular files is refused, unopened."""
    remote = storage.is_uri(root_spelled)
    real_roots = [] if remote else [Path(os.path.realpath(root_spelled))]
    audio: dict[tuple[str, str], str] = {}
    transcripts: dict[tuple[str, str], list[tuple[str | None, str]]] = {}
    for rel in files:
        path = PurePosixPath(rel)
        suffix = path.suffix.lower()
        if suffix in AUDIO_SUFFIXES:
            audio[(path.parent.as_posix(), path.stem)] = rel
        elif suffix in TRANSCRIPT_SUFFIXES:
            exact = (path.parent.as_posix(), path.stem)
            stem, language = _language_suffix(path.stem)
            transcripts.setdefault(exact, []).append((None, rel))
            if language:
                transcripts.setdefault((path.parent.as_posix(), stem), []).append((language, rel))
    for key in sorted(audio):
        rel_audio = audio[key]
        source = storage.join(root_spelled, rel_audio)
        by_language: dict[str | None, str] = {}
        for language, rel in sorted(transcripts.get(key, []), key=lambda t: (str(t[0]), FORMAT_PREFERENCE.index(PurePosixPath(t[1]).suffix.lower()))):
            by_language.setdefault(language, rel)
        if not by_language:
            out.reject(stable_id(label, rel_audio), source, RejectReason.MISSING_TRANSCRIPT, f"no transcript beside {rel_audio}", files[rel_audio])
            continue
        for language, rel_transcript in sorted(by_language.items(), key=lambda kv: str(kv[0])):
            source_id = stable_id(label, rel_audio, rel_transcript)
            version = f"{files[rel_audio]}|{files[rel_transcript]}"
            audio_path, transcript_path = (storage.join(root_spelled, rel) for rel in (rel_audio, rel_transcript))
            if not remote and not (_is_under(Path(audio_path), real_roots) and _is_under(Path(transcript_path), real_roots)):
                out.reject(source_id, source, RejectReason.UNSAFE_PATH, "a symlink leads outside the source folder", version)
                continue
            odd = [(rel, not_regular(files[rel])) for rel in (rel_audio, rel_transcript) if not_regular(files[rel])]
            if odd:
                out.reject(source_id, source, RejectReason.UNSAFE_PATH, "; ".join(f"{rel} is {kind}, not a regular file" for rel, kind in odd), version)
                continue
            out.sources.append(
                source_row(
                    source_id, source, audio_path, transcript_path, None, language or options.default_language, {},
                    output_name=_output_name(label, rel_audio), version=version,
                )
            )
    claimed = {rel for key, rels in transcripts.items() if key in audio for _, rel in rels}
    for rel in sorted({rel for rels in transcripts.values() for _, rel in rels} - claimed):
        out.reject(stable_id(label, rel), storage.join(root_spelled, rel), RejectReason.MISSING_AUDIO, f"no audio file for {rel}", files[rel])


def _located(path: str | Path) -> str:
    """Where a stage finds a file: an absolute local path, or the URI as given."""
    return str(path) if storage.is_uri(str(path)) else str(Path(path).resolve())


def source_row(
    source_id: str,
    source: str,
    audio_path: str | Path,
    transcript_path: str | Path | None,
    inline_text: str | None,
    language: str | None,
    metadata: dict[str, Any],
    encoding: str | None = None,
    transcript_origin: str | None = None,
    output_name: str | None = None,
    version: str = "",
) -> dict[str, Any]:
    return {
        "source_id": source_id,
        "key": source_key(source_id, version),
        "source": source,
        "output_name": output_name or source_id,
        "audio_path": _located(audio_path),
        "transcript_path": _located(transcript_path) if transcript_path else None,
        "inline_text": inline_text,
        "transcript_encoding": encoding,
        "transcript_origin": transcript_origin,
        "language": language,
        "metadata": json.dumps(metadata, sort_keys=True, ensure_ascii=False),
    }


def _manifest_path(value: Any, field_name: str, base: Path | str, roots: list[Path]) -> Path | str:
    if not isinstance(value, str) or not value.strip():
        raise _LineError(RejectReason.BAD_MANIFEST_LINE, f"{field_name!r} must be a non-empty string")
    if _SCHEME.match(value):
        raise _LineError(RejectReason.UNSAFE_PATH, f"{field_name!r} looks like a URL or protocol ({value.split(':')[0]}:)")
    if isinstance(base, str):  # a manifest in object storage: paths stay under its prefix
        scheme, rest = base.split("://", 1)
        joined = posixpath.normpath(posixpath.join(rest, value))
        if value.startswith("/") or not joined.startswith(rest.rstrip("/") + "/"):
            raise _LineError(RejectReason.UNSAFE_PATH, f"{field_name!r} leads outside the manifest's prefix")
        return f"{scheme}://{joined}"
    path = base / value
    if not _is_under(path, roots):
        raise _LineError(RejectReason.UNSAFE_PATH, f"{field_name!r} resolves outside the manifest's folder and allowed roots")
    return path


class _LineError(Exception):
    def __init__(self, reason: RejectReason, detail: str):
        self.reason, self.detail = reason, detail


def _output_name(label: str, relative: str) -> str:
    """Where per-file outputs (subtitles) of a source go: its path under the root it was found in, minus extension,
    always a relative path that stays under the output folder whatever the input names (``..``, absolute paths,
    control characters are dropped: two names that meet get their ids appended by ``_finish``)."""
    stem = relative.rsplit(".", 1)[0] if "." in relative.rsplit("/", 1)[-1] else relative
    return "/".join(safe_name_parts(f"{label}/{stem}")) or "source"


def safe_name_parts(name: str) -> list[str]:
    """The parts of a relative output name that cannot leave the folder it is written under."""
    cleaned = "".join(ch if ch.isprintable() and ch != "\\" else "_" for ch in name)
    return [part for part in cleaned.split("/") if part not in ("", ".", "..")]


def manifest_label(spelled: str) -> str:
    return posixpath.basename(spelled) if storage.is_uri(spelled) else Path(spelled).name


def _open_manifest(spelled: str) -> IO[bytes]:
    """The manifest's bytes as a stream (gunzipped when it ends in ``.gz``): never read whole."""
    if storage.is_uri(spelled):
        filesystem, path = storage.resolve(spelled)
        # Arrow's remote files read and seek but have no readline: a buffered reader gives lines (and a seek for a piece).
        stream = io.BufferedReader(filesystem.open_input_file(path), buffer_size=1 << 20)
    else:
        stream = open(spelled, "rb")
    return gzip.open(stream) if spelled.lower().endswith(".gz") else stream


def discover_manifest(manifest_spelled: str, options: SourceOptions, out: Discovery, audio_only: bool = False) -> None:
    for row in manifest_rows(manifest_spelled, options, audio_only):
        (out.rejects.append(_as_reject(row)) if row.get("reject_reason") else out.sources.append(row))


def manifest_rows(
    manifest_spelled: str, options: SourceOptions, audio_only: bool = False, start: int = 0, end: int | None = None, first_line: int = 1,
) -> Iterator[dict[str, Any]]:
    """One row per non-blank line (of the lines starting in bytes ``start``..``end``, the first of them numbered
    ``first_line``): a source (with ``manifest`` and ``manifest_line``) or a discovery reject."""
    base: Path | str
    label = manifest_label(manifest_spelled)
    if storage.is_uri(manifest_spelled):
        base, roots = posixpath.dirname(manifest_spelled), []
    else:
        base = Path(manifest_spelled).parent
        roots = [Path(os.path.realpath(base))] + [Path(os.path.realpath(r)) for r in options.allowed_roots]
    with _open_manifest(manifest_spelled) as stream:
        if start:
            stream.seek(start)
        offset = start
        for lineno, raw in enumerate(stream, start=first_line):  # lines as a file reads them (split at \n only)
            if end is not None and offset >= end:
                break
            offset += len(raw)
            if not raw.strip():
                continue
            where = f"{manifest_spelled}:{lineno}"
            try:
                row = _manifest_line(raw, lineno, label, manifest_spelled, base, roots, options, audio_only)
            except _LineError as err:
                detail = err.detail if err.detail.startswith("line ") else f"line {lineno}: {err.detail}"
                source_id = stable_id(label, f"line {lineno}")
                yield _reject_row(source_id, where, err.reason, detail, manifest_spelled, lineno, _line_key(source_id, raw))
                continue
            yield dict(row, manifest=manifest_spelled, manifest_line=lineno)


MAX_LINE_DEPTH = 32  # a manifest line is a flat object of a few fields: deeper nesting is refused before parsing


def _manifest_line(raw: bytes, lineno: int, label: str, spelled: str, base: Path | str, roots: list[Path], options: SourceOptions,
                   audio_only: bool) -> dict[str, Any]:
    """A manifest line's source row; ``_LineError`` for a line that is not one (whatever the line holds: deep
    nesting, numbers of thousands of digits, values out of any range are that line's reject, never the run's)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _LineError(RejectReason.BAD_MANIFEST_LINE, f"line {lineno}: not valid UTF-8 ({exc})") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_LINE_DEPTH and _nesting_depth(text) > MAX_LINE_DEPTH:
        raise _LineError(RejectReason.BAD_MANIFEST_LINE, f"line {lineno}: JSON nested deeper than {MAX_LINE_DEPTH} levels")
    try:
        entry = json.loads(text)
    except (ValueError, RecursionError, OverflowError) as exc:  # ValueError covers JSONDecodeError and the int-digits limit
        raise _LineError(RejectReason.BAD_MANIFEST_LINE, f"line {lineno}: not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(entry, dict):
        raise _LineError(RejectReason.BAD_MANIFEST_LINE, f"line {lineno}: not a JSON object")
    try:
        return _manifest_entry(entry, lineno, label, spelled, base, roots, options, audio_only, content=raw)
    except _LineError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, OSError) as exc:  # values no field check foresaw
        raise _LineError(RejectReason.BAD_MANIFEST_LINE, f"line {lineno}: {type(exc).__name__}: {str(exc)[:200]}") from None


def _nesting_depth(text: str) -> int:
    """The deepest nesting of JSON brackets outside strings, in one linear pass (``json.loads`` recurses per level)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _line_key(source_id: str, raw: bytes) -> int:
    """A manifest line's identity: its id and its bytes (the same line anywhere in the file is the same source)."""
    return source_key(source_id, "line:" + hashlib.sha256(raw.strip()).hexdigest())


def _reject_row(source_id: str, source: str, reason: RejectReason, detail: str, manifest: str | None = None, line: int | None = None,
                key: int | None = None) -> dict[str, Any]:
    return {"source_id": source_id, "source": source, "reject_stage": "discover_sources", "reject_reason": reason.value,
            "reject_detail": detail, "manifest": manifest, "manifest_line": line,
            "key": source_key(source_id, "") if key is None else key}


def _as_reject(row: dict[str, Any]) -> dict[str, Any]:
    return discovery_reject(row["source_id"], row["source"], RejectReason(row["reject_reason"]), row["reject_detail"], key=row.get("key"))


def duplicate_reject(row: dict[str, Any], first: dict[str, Any]) -> dict[str, Any]:
    """The reject of a source whose id an earlier one took: a later line of the same manifest is named by its line,
    anything else by its source."""
    if row.get("manifest") is not None and row.get("manifest") == first.get("manifest"):
        lineno, label = row["manifest_line"], manifest_label(row["manifest"])
        return _reject_row(stable_id(label, f"line {lineno}"), f"{row['manifest']}:{lineno}", RejectReason.DUPLICATE_SOURCE,
                           f"line {lineno}: same source id {row['source_id']!r} as line {first['manifest_line']}", row["manifest"], lineno,
                           row.get("key"))
    return _reject_row(stable_id(row["source"], "duplicate"), row["source"], RejectReason.DUPLICATE_SOURCE,
                       f"source id {row['source_id']!r} already used by {first['source']}", row.get("manifest"), row.get("manifest_line"),
                       row.get("key"))


def _manifest_entry(
    entry: dict[str, Any],
    lineno: int,
    label: str,
    spelled: str,
    base: Path,
    roots: list[Path],
    options: SourceOptions,
    audio_only: bool = False,
    content: bytes = b"",
) -> dict[str, Any]:
    audio = _manifest_path(entry.get("audio"), "audio", base, roots)
    has_transcript, has_text = "transcript" in entry, "text" in entry
    if has_transcript and has_text or not (has_transcript or has_text or audio_only):
        raise _LineError(RejectReason.BAD_MANIFEST_LINE, "needs exactly one of 'transcript' (a path) or 'text'")
    transcript = _manifest_path(entry["transcript"], "transcript", base, roots) if has_transcript else None
    text = entry.get("text")
    if has_text and not isinstance(text, str):
        raise _LineError(RejectReason.BAD_MANIFEST_LINE, "'text' must be a string")
    language = entry.get("language")
    if language is not None and (not isinstance(language, str) or not _LANGUAGE.match(language.lower())):
        raise _LineError(RejectReason.BAD_MANIFEST_LINE, f"'language' must be a language code like 'en' or 'pt-br', got {language!r}")
    for key in ("encoding", "transcript_origin"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise _LineError(RejectReason.BAD_MANIFEST_LINE, f"{key!r} must be a string")
    given_id = entry.get("id")
    if given_id is not None:
        if not isinstance(given_id, str) or not _ID.match(given_id):
            raise _LineError(RejectReason.BAD_MANIFEST_LINE, "'id' must match [A-Za-z0-9][A-Za-z0-9._-]* (at most 128 characters)")
        source_id = given_id
    else:
        if has_transcript or has_text:
            label_of_text = entry["transcript"] if has_transcript else "text:" + hashlib.sha256(text.encode()).hexdigest()
            source_id = stable_id(label, entry["audio"], label_of_text)
        else:
            source_id = stable_id(label, entry["audio"])
    metadata = {k: v for k, v in entry.items() if k not in RESERVED_KEYS}
    files = [path for path in (audio, transcript) if path is not None and not isinstance(path, str)]
    version = "|".join([hashlib.sha256(content.strip()).hexdigest(), *map(file_version, files)])
    return source_row(
        source_id,
        audio if isinstance(audio, str) else os.path.normpath(os.path.join(os.path.dirname(spelled), entry["audio"])),
        audio,
        transcript,
        text,
        language.lower() if language else options.default_language,
        metadata,
        entry.get("encoding"),
        entry.get("transcript_origin"),
        output_name=_output_name(Path(label).stem, os.path.normpath(entry["audio"]).lstrip("./")),
        version=version,
    )


def _kind(spelled: str) -> str | None:
    if storage.is_uri(spelled):
        found = storage.info(spelled).type
        return {storage.pafs.FileType.Directory: "dir", storage.pafs.FileType.File: "file"}.get(found)
    path = Path(spelled)
    return "dir" if path.is_dir() else "file" if path.is_file() else None


def discover_sources(paths: list[str], options: SourceOptions = SourceOptions()) -> Discovery:
    """All audio-transcript pairs under the given directories and manifests, in a deterministic order, collected in
    this process (small inputs: transcribe's ``--compare-with``, the report); the corpus job reads the same splits
    in tasks."""
    out = Discovery()
    for split in plan_splits(paths, options):
        for row in split_rows(split, options):
            (out.rejects.append(_as_reject(row)) if row.get("reject_reason") else out.sources.append(row))
    return _finish(out)


# --- discovery in splits ----------------------------------------------------------------------------------

REF_POSITION_BITS = 36  # a split holds up to 68 billion rows; 2**27 splits fit an int64


@dataclass(frozen=True)
class SourceSplit:
    """One unit of discovery: a manifest file, or the files of a folder tree under one top-level sub-folder (or
    directly in the root). Pairing never crosses folders, so splits pair exactly as the whole tree would."""

    index: int  # place among all splits, in input order: the high bits of its rows' refs
    kind: str  # "manifest" or "folder"
    spelled: str  # the manifest, or the root folder as the user named it (ids are relative to it)
    part: str | None = None  # folder: the top-level sub-folder; None: the files directly in the root
    start: int = 0  # manifest: the bytes whose lines this split reads ...
    end: int | None = None  # ... (None: to the end)
    first_line: int = 1  # ... and the number of the first of them


def plan_splits(paths: list[str], options: SourceOptions = SourceOptions()) -> list[SourceSplit]:
    """The splits of the given folders (or prefixes) and manifests, in a deterministic order; only the top level
    of each folder is listed here, and a plain manifest is cut into line-aligned pieces of ``manifest_split_mb``
    (one pass counting its lines: the driver never holds them)."""
    splits: list[SourceSplit] = []
    for spelled in paths:
        kind = _kind(spelled)
        if kind == "file":
            for start, end, first_line in _manifest_pieces(spelled, int(options.manifest_split_mb * 2**20)):
                splits.append(SourceSplit(len(splits), "manifest", spelled, start=start, end=end, first_line=first_line))
        elif kind == "dir":
            parts = [None, *_top_level_folders(spelled)]
            splits += [SourceSplit(len(splits) + k, "folder", spelled, part) for k, part in enumerate(parts)]
        else:
            raise FileNotFoundError(f"source path {spelled!r} is neither a directory (or prefix) nor a manifest file")
    return splits


def _manifest_pieces(spelled: str, piece_bytes: int) -> list[tuple[int, int | None, int]]:
    """(start, end, first line number) of line-aligned pieces of about ``piece_bytes``; a gzip manifest is one piece."""
    if spelled.lower().endswith(".gz"):
        return [(0, None, 1)]
    pieces: list[tuple[int, int | None, int]] = []
    start, first_line, boundary = 0, 1, piece_bytes
    offset = newlines = 0  # bytes before the current chunk, and the newlines among them
    with _open_manifest(spelled) as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            searched = 0
            while offset + len(chunk) > boundary:  # a piece ends with the first newline at or past its boundary
                cut = chunk.find(b"\n", max(boundary - offset, searched))
                if cut < 0:
                    break
                end = offset + cut + 1
                pieces.append((start, end, first_line))
                first_line = 1 + newlines + chunk.count(b"\n", 0, cut + 1)
                start, boundary, searched = end, end + piece_bytes, cut + 1
            newlines += chunk.count(b"\n")
            offset += len(chunk)
    pieces.append((start, None, first_line))
    return pieces


def _top_level_folders(root_spelled: str) -> list[str]:
    if storage.is_uri(root_spelled):
        filesystem, root = storage.resolve(root_spelled)
        found = filesystem.get_file_info(storage.pafs.FileSelector(root, recursive=False))
        return sorted(posixpath.basename(e.path) for e in found if e.type == storage.pafs.FileType.Directory and not posixpath.basename(e.path).startswith("."))
    return sorted(e.name for e in os.scandir(root_spelled) if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))  # os.walk does not follow them either


def _split_files(split: SourceSplit) -> tuple[str, dict[str, str]]:
    """The folder's label and the split's files relative to the root, each with its version (pipes and other
    non-files are listed too, so that they are refused and counted rather than silently left out)."""
    root_spelled = split.spelled
    if storage.is_uri(root_spelled):
        label = posixpath.basename(root_spelled.rstrip("/"))
        if split.part is None:
            return label, _remote_files(root_spelled, recursive=False)
        found = _remote_files(storage.join(root_spelled, split.part), recursive=True)
        return label, {f"{split.part}/{rel}": version for rel, version in found.items()}
    root = Path(root_spelled)
    if split.part is None:
        names = sorted(e.name for e in os.scandir(root) if not e.is_dir() and not e.name.startswith("."))
        return root.resolve().name, {name: file_version(root / name) for name in names}
    return root.resolve().name, {path.relative_to(root).as_posix(): file_version(path) for path in _walk(root / split.part)}


def split_rows(split: SourceSplit, options: SourceOptions) -> Iterator[dict[str, Any]]:
    """The split's rows in order, each with its ``ref`` and ``key``: sources, then (folders) the rejects of unpaired
    files."""
    if split.kind == "manifest":
        rows: Iterator[dict[str, Any]] = manifest_rows(split.spelled, options, start=split.start, end=split.end, first_line=split.first_line)
    else:
        out = Discovery()
        label, files = _split_files(split)
        pair_files(split.spelled, label, files, options, out)
        rows = iter([*out.sources, *(_reject_row(r["source_id"], r["source"], RejectReason(r["reason"]), r["detail"], key=r["key"])
                                     for r in out.rejects)])
    base = split.index << REF_POSITION_BITS
    for position, row in enumerate(rows):
        row["ref"] = base + position
        yield row


DISCOVERED_COLUMNS = (
    "source_id", "key", "source", "output_name", "audio_path", "transcript_path", "inline_text", "transcript_encoding",
    "transcript_origin", "language", "metadata", "ref", "manifest", "manifest_line", "reject_stage", "reject_reason", "reject_detail",
)
DISCOVERED_SCHEMA = pa.schema([(name, STREAM_COLUMNS[name]) for name in DISCOVERED_COLUMNS])


def read_split(split: SourceSplit, options: SourceOptions, rows_per_block: int = 5000) -> Iterator[pa.Table]:
    """The split's rows in tables of at most ``rows_per_block`` rows (what a discovery task yields; Ray makes one
    block of a split's tables while they fit its block size)."""
    block: list[dict[str, Any]] = []
    for row in split_rows(split, options):
        block.append(row)
        if len(block) >= rows_per_block:
            yield pa.Table.from_pylist(block, schema=DISCOVERED_SCHEMA)
            block = []
    if block:
        yield pa.Table.from_pylist(block, schema=DISCOVERED_SCHEMA)


def discover_audio(paths: list[str], options: SourceOptions = SourceOptions()) -> Discovery:
    """Audio to transcribe: audio files, directories of them (searched recursively), JSONL manifests (a transcript
    is optional), or wspsr Parquet tables with a ``source`` column (a corpus output folder, or a file)."""
    out = Discovery()
    for spelled in paths:
        if storage.is_uri(spelled):
            _discover_remote_audio(spelled, options, out)
            continue
        path = Path(spelled)
        if path.is_dir() and (path / "run.json").is_file():
            _discover_table(committed_files(path, "corpus"), spelled, out)
        elif path.is_dir():
            label = path.resolve().name
            root = [Path(os.path.realpath(path))]
            for file in _walk(path):
                if file.suffix.lower() not in AUDIO_SUFFIXES:
                    continue
                rel = file.relative_to(path).as_posix()
                source_id, source, version = stable_id(label, rel), os.path.join(spelled, rel), file_version(file)
                if not _is_under(file, root):
                    out.reject(source_id, source, RejectReason.UNSAFE_PATH, "a symlink leads outside the input folder", version)
                    continue
                if not_regular(version):
                    out.reject(source_id, source, RejectReason.UNSAFE_PATH, f"{rel} is {not_regular(version)}, not a regular file", version)
                    continue
                out.sources.append(
                    source_row(source_id, source, file, None, None, options.default_language, {}, output_name=_output_name(label, rel),
                               version=version)
                )
        elif path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES:
            source_id = stable_id(path.resolve().parent.name, path.name)
            out.sources.append(source_row(source_id, spelled, path, None, None, options.default_language, {}, output_name=path.stem,
                                          version=file_version(path)))
        elif path.is_file() and path.suffix.lower() == ".parquet":
            _discover_table([path], spelled, out)
        elif path.is_file():
            discover_manifest(spelled, options, out, audio_only=True)
        else:
            raise FileNotFoundError(f"input {spelled!r} is not an audio file, a folder, a manifest or a Parquet table")
    return _finish(out)


def _discover_remote_audio(spelled: str, options: SourceOptions, out: Discovery) -> None:
    """An audio object or a prefix of them in object storage (manifests and tables are read from local disk)."""
    kind = _kind(spelled)
    if kind == "file" and PurePosixPath(spelled).suffix.lower() in AUDIO_SUFFIXES:
        name = PurePosixPath(spelled)
        out.sources.append(source_row(stable_id(name.parent.name, name.name), spelled, spelled, None, None, options.default_language, {},
                                      output_name=name.stem, version=_info_version(storage.info(spelled))))
        return
    if kind != "dir":
        raise FileNotFoundError(f"input {spelled!r} is not an audio object or a prefix holding audio")
    label, files = _directory_files(spelled)
    for rel, version in files.items():
        if PurePosixPath(rel).suffix.lower() in AUDIO_SUFFIXES:
            location = storage.join(spelled, rel)
            out.sources.append(
                source_row(stable_id(label, rel), location, location, None, None, options.default_language, {}, output_name=_output_name(label, rel),
                           version=version)
            )


def _discover_table(files: list[str | Path], spelled: str, out: Discovery) -> None:
    import pyarrow.parquet as pq

    if not files:
        raise FileNotFoundError(f"{spelled!r} holds no Parquet files")
    seen: set[str] = set()
    for file in files:
        table = pq.read_table(file, columns=["source"])
        for source in table["source"].unique().to_pylist():
            if source is None or source in seen:
                continue
            seen.add(source)
            source_id = stable_id("table", source)
            if _SCHEME.match(source):
                out.reject(source_id, source, RejectReason.UNSAFE_PATH, "a URL or protocol, not a file path")
                continue
            path = Path(source)
            out.sources.append(source_row(source_id, source, path, None, None, None, {}, output_name=_output_name("table", path.as_posix()),
                                          version=file_version(path)))


def _finish(out: Discovery) -> Discovery:
    first: dict[str, dict[str, Any]] = {}
    unique = []
    for row in out.sources:
        if row["source_id"] in first:
            out.rejects.append(_as_reject(duplicate_reject(row, first[row["source_id"]])))
            continue
        first[row["source_id"]] = row
        unique.append(row)
    names: dict[str, int] = {}
    for row in unique:
        names[row["output_name"]] = names.get(row["output_name"], 0) + 1
    for row in unique:  # two sources would write the same subtitle file: both get their id in the name
        if names[row["output_name"]] > 1:
            row["output_name"] = f"{row['output_name']}.{row['source_id'][:8]}"
    out.sources = sorted(unique, key=lambda r: r["source_id"])
    return out
