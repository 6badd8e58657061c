"""Where inputs and outputs live: local paths, or URIs (``s3://bucket/prefix``, ``gs://bucket/prefix``) through
pyarrow filesystems.

Credentials and endpoints come from the environment, as the cloud SDKs read them (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for S3-compatible servers, ``GOOGLE_APPLICATION_CREDENTIALS``...),
so a config file never holds a secret and a cluster passes them to workers in the runtime environment.
Object stores have no rename: a file is written straight to its final key (an object appears whole or not at
all), and the commit markers of ``pipeline.io.commit`` are what make a set of files visible.

``atomic_file`` and ``write_atomically`` are the one way wspsr writes a file: whole or not at all, so a crash or a
full disk never leaves half a file under a name a reader trusts.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

import pyarrow.fs as pafs

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
TMP_PREFIX = ".tmp-"


class StorageError(OSError):
    pass


# Object stores and distributed filesystems that pyarrow opens. Nothing else is a URI here: a source path that
# says ``http://`` or ``concat:`` stays a (missing) file name and is never fetched.
STORAGE_SCHEMES = frozenset({"s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"})


def is_uri(location: str | os.PathLike) -> bool:
    """``s3://...``, ``gs://...``, ``hdfs://...``; anything else (``file://`` too) is a local path."""
    match = _URI.match(str(location))
    return bool(match) and match.group(1).lower() in STORAGE_SCHEMES


@functools.lru_cache(maxsize=32)
def _filesystem(scheme_and_bucket: str) -> pafs.FileSystem:
    filesystem, _ = pafs.FileSystem.from_uri(scheme_and_bucket)
    return filesystem


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it; a plain path becomes absolute on the local filesystem."""
    spelled = str(location)
    if not is_uri(spelled):
        if spelled.startswith("file://"):
            spelled = spelled[len("file://"):]
        return pafs.LocalFileSystem(), os.path.abspath(spelled)
    scheme, rest = spelled.split("://", 1)
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise StorageError(f"{spelled!r} names no bucket")
    try:
        filesystem = _filesystem(f"{scheme.lower()}://{bucket}")
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for unknown schemes and bad settings
        raise StorageError(
            f"cannot open {spelled!r}: {exc} (credentials and endpoint come from the environment, e.g. AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for S3; GOOGLE_APPLICATION_CREDENTIALS for gs://)"
        ) from None
    return filesystem, posixpath.normpath(rest).rstrip("/")


def join(location: str, *parts: str) -> str:
    """A child of a location, spelled like it (a URI stays a URI)."""
    if is_uri(location):
        return posixpath.join(location.rstrip("/"), *parts)
    return os.path.join(location, *parts)


def info(location: str) -> pafs.FileInfo:
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path)


def read_bytes(location: str) -> bytes:
    filesystem, path = resolve(location)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def list_files(location: str) -> list[str]:
    """Files under a folder or prefix, recursively, as sorted relative POSIX paths; hidden names are skipped."""
    filesystem, root = resolve(location)
    found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    names = []
    for entry in found:
        if entry.type != pafs.FileType.File:
            continue
        relative = posixpath.relpath(entry.path, root) if not isinstance(filesystem, pafs.LocalFileSystem) else os.path.relpath(entry.path, root)
        relative = relative.replace(os.sep, "/")
        if not any(part.startswith(".") for part in relative.split("/")):
            names.append(relative)
    return sorted(names)


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[Path]:
    """A local file with the location's bytes, for tools that need a path (ffmpeg): the file itself when it is
    local, else a temporary download (same suffix) removed afterwards."""
    if not is_uri(location):
        yield Path(location)
        return
    filesystem, path = resolve(location)
    handle, temporary = tempfile.mkstemp(prefix="wspsr-", suffix=posixpath.splitext(path)[1])
    try:
        with os.fdopen(handle, "wb") as local, filesystem.open_input_stream(path) as remote:
            shutil.copyfileobj(remote, local, 4 * 1024 * 1024)
        yield Path(temporary)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


@contextlib.contextmanager
def atomic_file(location: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that appears under ``location`` whole or not at all. Locally: a temporary file beside
    it (``.tmp-`` name, on the same filesystem), synced, then renamed over it; removed if writing fails. In object
    storage an object appears whole when its upload completes, so it is written straight to its key."""
    spelled = str(location)
    if is_uri(spelled):
        filesystem, path = resolve(spelled)
        with filesystem.open_output_stream(path) as stream:
            yield stream
        return
    final = Path(spelled)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{final.name}.", dir=final.parent)
    os.fchmod(fd, 0o644)  # mkstemp makes it private; Ray workers and other users read what it becomes
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomically(location: str | os.PathLike, data: bytes) -> None:
    with atomic_file(location) as handle:
        handle.write(data)


class Store:
    """A folder on some filesystem, addressed by relative POSIX paths: what an output folder needs."""

    def __init__(self, location: str | os.PathLike):
        self.location = str(location)
        self.fs, self.base = resolve(self.location)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, relative: str) -> str:
        return posixpath.join(self.base, relative) if relative else self.base

    def uri(self, relative: str = "") -> str:
        """How a user names this file: an absolute local path, or a URI."""
        root = self.base if self.local else self.location.rstrip("/")
        return join(root, relative) if relative else root

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type == pafs.FileType.File

    def checked(self, relative: str) -> str:
        """``relative`` when reaching it from this folder follows no link (a folder a user linked into the output
        leads elsewhere: nothing is written or removed through it); ``StorageError`` otherwise."""
        if not self.local:
            return relative
        parent = posixpath.dirname(relative)
        if parent:
            real_base = os.path.realpath(self.base)
            real_parent = os.path.realpath(self.path(parent))
            if real_parent != os.path.join(real_base, *parent.split("/")):
                raise StorageError(f"{self.uri(relative)}: a folder on the way is a link; wspsr writes and removes nothing through links")
        return relative

    def read_bytes(self, relative: str) -> bytes:
        with self.fs.open_input_stream(self.path(relative)) as stream:
            return stream.read()

    def write_bytes(self, relative: str, data: bytes) -> None:
        write_atomically(self.uri(self.checked(relative)), data)

    def list(self, relative: str, recursive: bool = False) -> list[str]:
        """Files under a folder as paths relative to that folder, sorted (empty when it does not exist)."""
        root = self.path(relative)
        found = self.fs.get_file_info(pafs.FileSelector(root, recursive=recursive, allow_not_found=True))
        return sorted(
            posixpath.relpath(e.path.replace(os.sep, "/"), root.replace(os.sep, "/")) for e in found if e.type == pafs.FileType.File
        )

    def make_dirs(self, relative: str) -> None:
        if self.local:  # object stores have no folders to make
            os.makedirs(self.path(relative), exist_ok=True)

    def delete(self, relative: str) -> None:
        """Remove one file (a link itself, never what it points to; never through a linked folder)."""
        if self.local:
            try:
                self.checked(relative)
            except StorageError:
                return
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
                os.unlink(self.path(relative))
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(relative))

    def delete_temporaries_of(self, relative: str) -> list[str]:
        """The temporary files ``atomic_file`` leaves beside ``relative`` when a write is interrupted, removed."""
        folder, name = posixpath.split(relative)
        removed = []
        for found in self.list(folder):
            if found.startswith(f"{TMP_PREFIX}{name}.") and len(found) == len(TMP_PREFIX) + len(name) + 9:
                self.delete(posixpath.join(folder, found))
                removed.append(posixpath.join(folder, found))
        return removed

    def remove_empty_dirs(self, relative: str) -> None:
        """A folder this job made, removed if nothing is left in it (its empty sub-folders too); never through a link."""
        if not self.local:
            return
        top = self.path(relative)
        if os.path.islink(top) or not os.path.isdir(top):
            return
        for directory, subdirs, files in os.walk(top, topdown=False):
            if not files and not os.listdir(directory):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
    def delete_dir(self, relative: str) -> None:
        path = self.path(relative)
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return
        self.fs.delete_dir_contents(path, missing_dir_ok=True)
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_dir(path)
