"""Where transferred bytes come from and go to: local files and memory (no network).

Receiving a file (:class:`FileSink`):

* the name is checked with :func:`msgrlib.transfer.names.check_file_name` (refused, not fixed);
* bytes go to a new temporary file ``.msgr-*.part`` (mode 0600, created exclusively) in the
  chosen directory itself, so the final rename never crosses a file system;
* :meth:`FileSink.commit` links it to its name only after the machine checked the hash: the
  link fails if the name exists (so nothing is overwritten without ``overwrite=True``, even if
  the file appeared meanwhile); with ``overwrite=True`` it replaces it atomically;
* :meth:`FileSink.discard` (failure, decline, cancel) removes the temporary file: nothing
  partial stays on disk. Received files keep mode 0600 (readable by you only).

A directory arrives as one tar archive (:class:`DirectorySink`): written like a file to a
temporary file, then checked member by member and unpacked by :mod:`msgrlib.transfer.archive`.
A one-shot secret goes to :class:`MemorySink`, which never touches the disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mimetypes
import os
import tempfile
from dataclasses import dataclass, field
from typing import IO

from msgrlib.transfer import archive
from msgrlib.transfer.errors import SinkError, TargetExists, TransferError, TransferStateError
from msgrlib.transfer.machine import make_offer
from msgrlib.transfer.messages import (
    DEFAULT_CHUNK_SIZE,
    KIND_DIRECTORY,
    KIND_FILE,
    KIND_SECRET,
    MIME_RE,
    Offer,
)
from msgrlib.transfer.names import check_file_name

_TEMP_PREFIX = ".msgr-"
_TEMP_SUFFIX = ".part"


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _directory(directory: str) -> str:
    real = os.path.realpath(directory)
    if not os.path.isdir(real):
        raise SinkError(f"{directory!r} is not a directory")
    return real


class MemorySink:
    """A secret's bytes, in memory only. ``value`` is set by ``commit`` and ``take()`` hands it
    out once (a one-shot secret is shown once)."""

    def __init__(self, *, max_size: int) -> None:
        self._buf = bytearray()
        self._max = max_size
        self._value: bytes | None = None
        self.committed = False

    def write(self, data: bytes) -> None:
        if len(self._buf) + len(data) > self._max:
            raise SinkError("more data than was offered")
        self._buf += data

    def commit(self) -> None:
        self._value = bytes(self._buf)
        self._buf = bytearray()
        self.committed = True

    def discard(self) -> None:
        self._buf = bytearray()
        self._value = None

    def take(self) -> bytes:
        """The secret, once; raises :class:`TransferStateError` before commit or after."""
        if self._value is None:
            raise TransferStateError("no secret to take (not received, or already taken)")
        value, self._value = self._value, None
        return value


class FileSink:
    """Writes one received file into ``directory`` under ``name``.

    Raises :class:`UnsafeName` for a refused name, :class:`TargetExists` if ``name`` exists
    and ``overwrite`` is false (ask the person, then try again with ``overwrite=True``),
    :class:`SinkError` if the directory is missing or unwritable. Creating the sink creates
    the temporary file; ``commit`` or ``discard`` must follow (it is a context manager that
    discards unless committed).
    """

    def __init__(self, directory: str, name: str, *, size: int, overwrite: bool = False) -> None:
        self.name = check_file_name(name)
        self.directory = _directory(directory)
        self.path = os.path.join(self.directory, self.name)
        self._size = size
        self._overwrite = overwrite
        if not overwrite and os.path.lexists(self.path):
            raise TargetExists(f"{self.path} already exists", self.path)
        try:
            fd, self._temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX,
                                              dir=self.directory)
        except OSError as exc:
            raise SinkError(f"cannot create a file in {self.directory}: {exc.strerror}") from exc
        self._fd: int | None = fd
        self._written = 0
        self.committed = False

    @property
    def temp_path(self) -> str:
        return self._temp

    def __enter__(self) -> FileSink:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.discard()

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise TransferStateError("the file is already closed")
        if self._written + len(data) > self._size:
            raise SinkError("more data than was offered")
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            raise SinkError(f"cannot write {self.path}: {exc.strerror}") from exc
        self._written += len(data)

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def commit(self) -> None:
        """Put the complete file in place; raises :class:`TargetExists` or :class:`SinkError`
        (and then the temporary file is gone too)."""
        if self._fd is None:
            raise TransferStateError("the file is already closed")
        try:
            if self._written != self._size:
                raise SinkError(f"{self._written} bytes written, {self._size} offered")
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise SinkError(f"cannot write {self.path}: {exc.strerror}") from exc
            self._close()
            self._place()
        except TransferError:
            self.discard()
            raise
        self.committed = True
        _fsync_dir(self.directory)

    def _place(self) -> None:
        if self._overwrite:
            try:
                os.replace(self._temp, self.path)
            except OSError as exc:
                raise SinkError(f"cannot save {self.path}: {exc.strerror}") from exc
            return
        try:
            os.link(self._temp, self.path)
        except FileExistsError:
            raise TargetExists(f"{self.path} appeared while receiving; nothing was "
                               "overwritten", self.path) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK,
                                 errno.EXDEV, errno.ENOSYS):
                raise SinkError(f"cannot save {self.path}: {exc.strerror}") from exc
            # No hard links here (FAT, some network file systems): claim the name with an
            # exclusive create, then move the data over our own empty file.
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                raise TargetExists(f"{self.path} appeared while receiving", self.path) from None
            except OSError as exc2:
                raise SinkError(f"cannot save {self.path}: {exc2.strerror}") from exc2
            try:
                os.replace(self._temp, self.path)
            except OSError as exc2:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                raise SinkError(f"cannot save {self.path}: {exc2.strerror}") from exc2
            return
        with contextlib.suppress(OSError):
            os.unlink(self._temp)

    def discard(self) -> None:
        """Remove the temporary file (never the destination). Idempotent, never raises."""
        with contextlib.suppress(OSError):
            self._close()
        if not self.committed:
            with contextlib.suppress(OSError):
                os.unlink(self._temp)


class DirectorySink:
    """Receives a directory's tar archive, then unpacks it as ``directory/name``.

    The archive goes to a temporary file in ``directory`` (as :class:`FileSink` does);
    ``commit`` checks every member (:func:`archive.check_members`) before creating anything,
    unpacks into a temporary directory, and renames it to ``name`` only if that does not exist
    (or ``overwrite``: not offered for directories, to keep one rule: a directory is never
    merged or replaced). The temporary archive is removed in every case.
    """

    def __init__(self, directory: str, name: str, *, size: int,
                 limits: archive.ArchiveLimits = archive.DEFAULT_LIMITS) -> None:
        self.name = check_file_name(name, what="directory name")
        self.directory = _directory(directory)
        self.path = os.path.join(self.directory, self.name)
        if os.path.lexists(self.path):
            raise TargetExists(f"{self.path} already exists", self.path)
        self._limits = limits
        self._size = size
        try:
            fd, self._temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".tar" + _TEMP_SUFFIX,
                                              dir=self.directory)
        except OSError as exc:
            raise SinkError(f"cannot create a file in {self.directory}: {exc.strerror}") from exc
        self._file = os.fdopen(fd, "w+b")
        self._written = 0
        self.committed = False
        self.members = 0

    def write(self, data: bytes) -> None:
        if self._written + len(data) > self._size:
            raise SinkError("more data than was offered")
        try:
            self._file.write(data)
        except OSError as exc:
            raise SinkError(f"cannot write in {self.directory}: {exc.strerror}") from exc
        self._written += len(data)

    def commit(self) -> None:
        try:
            if self._written != self._size:
                raise SinkError(f"{self._written} bytes written, {self._size} offered")
            self._file.flush()
            self._file.seek(0)
            self.members = archive.extract(self._file, self.directory, self.name,
                                           limits=self._limits)
        except OSError as exc:
            self.discard()
            raise SinkError(f"cannot unpack into {self.directory}: {exc.strerror}") from exc
        except TransferError:
            self.discard()
            raise
        self.committed = True
        self.discard()  # the archive; the directory stays

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._temp)


class BytesSource:
    """A sender's content held in memory (a secret read from stdin, tests)."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    def read(self, offset: int, size: int) -> bytes:
        return self._data[offset:offset + size]


class FileSource:
    """A sender's content read with ``os.pread`` (no shared file position) from ``path``, or
    from ``fileobj`` (an open binary file; it is closed with the source)."""

    def __init__(self, path: str | None = None, *, fileobj: IO[bytes] | None = None) -> None:
        if (path is None) == (fileobj is None):
            raise TypeError("give a path or a fileobj")
        self._file = fileobj if fileobj is not None else open(path, "rb")  # type: ignore[arg-type]
        self._fd = self._file.fileno()

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        self._file.close()


def guess_mime(name: str) -> str:
    """A MIME type for ``name`` from its extension (only to show the receiver), or
    ``application/octet-stream``; always one the offer parser accepts."""
    guessed = (mimetypes.guess_type(name, strict=False)[0] or "").lower()
    return guessed if MIME_RE.match(guessed) else "application/octet-stream"


@dataclass
class Prepared:
    """What a sender needs for one transfer: the offer, and where its bytes come from
    (``close()`` the source when the transfer is over)."""

    offer: Offer
    source: BytesSource | FileSource
    skipped: list[str] = field(default_factory=list)  # directory: links and special files


def prepare_file(path: str, transfer_id: str, *, chunk: int = DEFAULT_CHUNK_SIZE,
                 name: str | None = None) -> Prepared:
    """Hash the file at ``path`` and make its offer. The offered name is its base name (or
    ``name``); one the receiver would refuse raises :class:`UnsafeName` here, before
    anything is sent. ``OSError`` if it cannot be read."""
    offered = check_file_name(name if name is not None else
                              os.path.basename(os.path.abspath(path)))
    source = FileSource(path)
    try:
        size, sha = _hash_fd(source)
        offer = make_offer(transfer_id, kind=KIND_FILE, name=offered, size=size,
                           mime=guess_mime(offered), sha256=sha, chunk=chunk)
    except BaseException:
        source.close()
        raise
    return Prepared(offer, source)


def prepare_directory(path: str, transfer_id: str, *, chunk: int = DEFAULT_CHUNK_SIZE,
                      name: str | None = None,
                      limits: archive.ArchiveLimits = archive.DEFAULT_LIMITS) -> Prepared:
    """Pack the directory at ``path`` into an anonymous temporary file (gone when closed)
    and make its offer. Raises :class:`UnsafeName`, :class:`ArchiveError` (a name or limit
    the receiver would refuse), :class:`TransferError`, ``OSError``."""
    offered = check_file_name(name if name is not None else
                              os.path.basename(os.path.abspath(path)), what="directory name")
    temp = tempfile.TemporaryFile()
    try:
        result = archive.build(path, temp, limits=limits)
        temp.flush()
        offer = make_offer(transfer_id, kind=KIND_DIRECTORY, name=offered,
                           size=result.archive_bytes, mime="application/x-tar",
                           sha256=result.sha256, chunk=chunk)
    except BaseException:
        temp.close()
        raise
    return Prepared(offer, FileSource(fileobj=temp), result.skipped)


def prepare_secret(data: bytes, transfer_id: str, *,
                   chunk: int = DEFAULT_CHUNK_SIZE) -> Prepared:
    """A one-shot secret from memory (``text/plain`` if it is UTF-8)."""
    try:
        data.decode("utf-8")
        mime = "text/plain"
    except UnicodeDecodeError:
        mime = "application/octet-stream"
    offer = make_offer(transfer_id, kind=KIND_SECRET, name="", size=len(data), mime=mime,
                       sha256=hashlib.sha256(data).hexdigest(), chunk=chunk)
    return Prepared(offer, BytesSource(data))


def _hash_fd(source: FileSource, *, block: int = 1024 * 1024) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    while data := source.read(size, block):
        h.update(data)
        size += len(data)
    return size, h.hexdigest()


def hash_file(path: str, *, block: int = 1024 * 1024) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file, read once, for an offer."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


__all__ = ["BytesSource", "DirectorySink", "FileSink", "FileSource", "MemorySink", "Prepared",
           "guess_mime", "hash_file", "prepare_directory", "prepare_file", "prepare_secret"]
