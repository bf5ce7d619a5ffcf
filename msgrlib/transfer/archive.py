"""A directory as one tar archive: built and unpacked by msgr itself with :mod:`tarfile`.

Building (:func:`build`) walks the directory without following links and stores only
directories and regular files, with plain metadata (owner 0, mode 0644 or 0755); symbolic
links, devices, FIFOs and sockets are left out and listed in ``BuildResult.skipped`` so the
sender can say so. A name the receiver would refuse fails the build, before anything is sent.

Unpacking (:func:`extract`) reads every member header first and refuses the whole archive,
before creating anything, if any member:

* is anything but a regular file or a directory (symbolic or hard link, character or block
  device, FIFO, sparse or contiguous file, GNU/vendor extension type);
* has an absolute name, an empty, ``.`` or ``..`` component, a backslash, a control or format
  character, a component over 255 bytes, a path over ``max_path_bytes`` or deeper than
  ``max_depth`` (see :mod:`msgrlib.transfer.names`);
* repeats a name, or lives under a name that is a file;
* makes the count exceed ``max_members`` or the total size exceed ``max_total_size`` or the
  archive's own size (so what is written stays within the size the person accepted).

Only then is it unpacked into a new temporary directory beside the destination (files created
exclusively, never following links, mode 0600 or 0700, directories 0700), which is renamed to
the destination name only if that name is free. On any failure the temporary directory is
removed: nothing partial is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import IO

from msgrlib.transfer.errors import (
    ArchiveError,
    SourceError,
    TargetExists,
    UnsafeName,
)
from msgrlib.transfer.errors import shown as _shown
from msgrlib.transfer.names import check_component, check_file_name


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what an archive may hold (checked on both sides)."""

    #: A big source tree has tens of thousands of files; far more is an inode bomb.
    max_members: int = 100_000
    #: The sum of the members' sizes (as the receiver's file size limit).
    max_total_size: int = 64 * 1024**3
    #: Deeper nesting than this is no real directory tree.
    max_depth: int = 64
    #: Linux PATH_MAX is 4096 for the whole path; leave room for the destination's own path.
    max_path_bytes: int = 3072


DEFAULT_LIMITS = ArchiveLimits()

_BLOCK = 1024 * 1024


@dataclass
class BuildResult:
    members: int = 0
    content_bytes: int = 0       # the files' sizes, summed
    archive_bytes: int = 0       # what is sent: the offer's size
    sha256: str = ""             # of the archive bytes: the offer's hash
    skipped: list[str] = field(default_factory=list)  # links and special files left out


def check_member_name(name: object, *, limits: ArchiveLimits = DEFAULT_LIMITS) -> tuple[str, ...]:
    """The path components of a member name, or :class:`ArchiveError` saying why not."""
    if not isinstance(name, str) or not name:
        raise ArchiveError("the archive holds a member without a name")
    if name.startswith("/"):
        raise ArchiveError(f"the archive holds an absolute path {_shown(name)}")
    if len(name.encode("utf-8", "surrogatepass")) > limits.max_path_bytes:
        raise ArchiveError(f"the archive holds a path longer than {limits.max_path_bytes} bytes")
    parts = tuple(name.split("/"))
    if len(parts) > limits.max_depth:
        raise ArchiveError(f"the archive nests deeper than {limits.max_depth} directories")
    for part in parts:
        if part == "..":
            raise ArchiveError(f"the archive holds a path leaving its directory {_shown(name)}")
        try:
            check_component(part, what="member name")
        except UnsafeName as exc:
            raise ArchiveError(f"the archive holds an unsafe name: {exc}") from None
    return parts


def _type_name(info: tarfile.TarInfo) -> str:
    if info.issym():
        return "a symbolic link"
    if info.islnk():
        return "a hard link"
    if info.ischr() or info.isblk():
        return "a device file"
    if info.isfifo():
        return "a FIFO"
    return "a special member"


class MemberChecker:
    """Checks members one at a time, remembering what it saw (for duplicates, parents, count
    and total size). Pure: works on :class:`tarfile.TarInfo` objects only."""

    def __init__(self, *, limits: ArchiveLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.count = 0
        self.total = 0
        self._explicit: dict[tuple[str, ...], bool] = {}  # member path -> is a directory
        self._parents: set[tuple[str, ...]] = set()  # every proper prefix of a member path

    def check(self, info: tarfile.TarInfo) -> tuple[str, ...]:
        """The member's path components if it may be unpacked, else :class:`ArchiveError`."""
        self.count += 1
        if self.count > self.limits.max_members:
            raise ArchiveError(f"the archive holds more than {self.limits.max_members} members")
        parts = check_member_name(info.name, limits=self.limits)
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
            raise ArchiveError(f"the archive holds {_type_name(info)} {_shown(info.name)}; "
                               "only files and directories are accepted")
        if info.sparse is not None:
            # A sparse member (GNU, or PAX GNU.sparse.* headers, which tarfile reports as a
            # regular file) unpacks to its "real size" of zeros from a few bytes of archive:
            # a disk-filling bomb far larger than the offer the person accepted.
            raise ArchiveError(f"the archive holds a sparse file {_shown(info.name)}; only "
                               "plain files and directories are accepted")
        is_dir = info.type == tarfile.DIRTYPE
        if parts in self._explicit:
            raise ArchiveError(f"the archive holds {_shown(info.name)} twice")
        for depth in range(1, len(parts)):
            if self._explicit.get(parts[:depth]) is False:
                raise ArchiveError(f"the archive puts {_shown(info.name)} under a file")
        if not is_dir and parts in self._parents:
            raise ArchiveError(f"the archive has a file {_shown(info.name)} where it has a "
                               "directory")
        size = 0 if is_dir else info.size
        if size < 0:
            raise ArchiveError("the archive holds a member with a negative size")
        self.total += size
        if self.total > self.limits.max_total_size:
            raise ArchiveError(f"the archive's files add up to more than "
                               f"{self.limits.max_total_size} bytes")
        self._explicit[parts] = is_dir
        self._parents.update(parts[:depth] for depth in range(1, len(parts)))
        return parts


_Member = tuple[tarfile.TarInfo, tuple[str, ...]]


def _read_members(tar: tarfile.TarFile, limits: ArchiveLimits) -> list[_Member]:
    """Every member, checked, before anything is written; stops at the first refusal (so a
    huge member count is not read to its end)."""
    checker = MemberChecker(limits=limits)
    members: list[_Member] = []
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, EOFError, ValueError, UnicodeError, OverflowError) as exc:
            raise ArchiveError(f"the archive is damaged ({type(exc).__name__})") from None
        if info is None:
            return members
        members.append((info, checker.check(info)))


def extract(fileobj: IO[bytes], parent: str, name: str, *,
            limits: ArchiveLimits = DEFAULT_LIMITS) -> int:
    """Unpack the archive in ``fileobj`` (seekable, positioned at its start) as the new
    directory ``parent/name``; return the number of members.

    Raises :class:`ArchiveError` (a member breaks a rule: nothing was created),
    :class:`UnsafeName` (``name``), :class:`TargetExists` (``parent/name`` exists), or
    ``OSError`` from the file system (and then nothing is left either).
    """
    check_file_name(name, what="directory name")
    # Plain members' bytes are inside the archive, so they cannot add up to more than it:
    # what is written to disk stays within the size the person accepted.
    start = fileobj.tell()
    length = fileobj.seek(0, os.SEEK_END) - start
    fileobj.seek(start)
    if length < limits.max_total_size:
        limits = dataclasses.replace(limits, max_total_size=length)
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r:")
    except (tarfile.TarError, EOFError, ValueError, UnicodeError, OverflowError):
        raise ArchiveError("the received data is not a tar archive") from None
    with tar:
        members = _read_members(tar, limits)
        target = os.path.join(parent, name)
        try:
            os.mkdir(target, 0o700)  # claims the name: fails if anything is there
        except FileExistsError:
            raise TargetExists(f"{target} already exists", target) from None
        temp = None
        try:
            temp = tempfile.mkdtemp(prefix=".msgr-", suffix=".part", dir=parent)
            for info, parts in members:
                _unpack_one(tar, info, parts, temp)
            os.rename(temp, target)  # onto our own empty directory: atomic on POSIX
            temp = None
        except BaseException:
            if temp is not None:
                shutil.rmtree(temp, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rmdir(target)
            raise
    return len(members)


def _unpack_one(tar: tarfile.TarFile, info: tarfile.TarInfo, parts: tuple[str, ...],
                root: str) -> None:
    path = os.path.join(root, *parts)
    if info.type == tarfile.DIRTYPE:
        os.makedirs(path, mode=0o700, exist_ok=True)
        return
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    mode = 0o700 if info.mode & 0o100 else 0o600
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        # Only on a case-insensitive file system ("A" and "a"): refuse, do not merge.
        raise ArchiveError(f"the archive holds two members named like {_shown(info.name)} "
                           "on this file system") from None
    try:
        src = tar.extractfile(info)
        left = info.size
        while left:
            data = src.read(min(left, _BLOCK)) if src is not None else b""
            if not data:
                raise ArchiveError("the archive ends inside a file")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            left -= len(data)
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"the archive is damaged ({type(exc).__name__})") from None
    finally:
        os.close(fd)


class _HashingWriter:
    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)


def build(source: str, out: IO[bytes], *,
          limits: ArchiveLimits = DEFAULT_LIMITS) -> BuildResult:
    """Write a tar archive of the directory ``source`` (its contents, not its own name) to
    ``out`` (written sequentially), and return what went in and the archive's SHA-256.

    Raises :class:`ArchiveError` for a name the receiver would refuse or a limit crossed,
    :class:`SourceError` if a file changes or is swapped while it is read, ``OSError`` from reading.
    """
    result = BuildResult()
    writer = _HashingWriter(out)
    checker = MemberChecker(limits=limits)
    stream: IO[bytes] = writer  # type: ignore[assignment]  # tarfile only calls write()
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel, st in _walk(source, result.skipped):
            info = tarfile.TarInfo(rel)
            info.mtime = int(st.st_mtime)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if stat.S_ISDIR(st.st_mode):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                checker.check(info)
                tar.addfile(info)
            else:
                info.type, info.size = tarfile.REGTYPE, st.st_size
                info.mode = 0o755 if st.st_mode & 0o100 else 0o644
                checker.check(info)
                path = os.path.join(source, *rel.split("/"))
                # O_NOFOLLOW and the same inode: a file swapped for a symlink
                # (or anything else) after the walk is refused, never followed.
                try:
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                except OSError as exc:
                    raise SourceError(f"{path} changed while it was being packed") from exc
                with os.fdopen(fd, "rb") as f:
                    now = os.fstat(f.fileno())
                    if (not stat.S_ISREG(now.st_mode) or now.st_ino != st.st_ino
                            or now.st_size != st.st_size):
                        raise SourceError(f"{path} changed while it was being packed")
                    try:
                        tar.addfile(info, f)
                    except OSError as exc:
                        raise SourceError(f"{path} changed while it was being packed") from exc
            result.members += 1
            result.content_bytes = checker.total
    result.archive_bytes = writer.size
    result.sha256 = writer.hash.hexdigest()
    return result


def _walk(source: str, skipped: list[str]) -> list[tuple[str, os.stat_result]]:
    """Every directory and regular file under ``source``, relative, sorted, links not
    followed; everything else goes to ``skipped``."""
    found: list[tuple[str, os.stat_result]] = []
    if not os.path.isdir(source):
        raise SourceError(f"{source} is not a directory")

    def visit(directory: str, prefix: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = prefix + entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                found.append((rel, st))
                visit(entry.path, rel + "/")
            elif stat.S_ISREG(st.st_mode):
                found.append((rel, st))
            else:
                skipped.append(rel)

    visit(source, "")
    return found


__all__ = ["DEFAULT_LIMITS", "ArchiveLimits", "BuildResult", "MemberChecker", "build",
           "check_member_name", "extract"]
