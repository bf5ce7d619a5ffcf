"""Directories as one tar archive: built from a real tree, unpacked only after every member
passed its checks, hostile archives refused with nothing written."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgrlib.transfer import archive
from msgrlib.transfer.archive import ArchiveLimits, MemberChecker, build, extract
from msgrlib.transfer.errors import ArchiveError, TargetExists, TransferError, UnsafeName
from msgrlib.transfer.files import BytesSource, DirectorySink
from msgrlib.transfer.machine import Receiver, ReceiverState, Sender, SenderState, make_offer

FUZZ = settings(max_examples=int(os.environ.get("MSGR_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def make_tree(root) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "sub/b.bin": os.urandom(3000),
        "sub/deeper/c.txt": b"",
        "日本語/naïve.txt": "unicode ✓".encode(),
        "run.sh": b"#!/bin/sh\necho hi\n",
    }
    for rel, data in files.items():
        path = root.joinpath(*rel.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.chmod(root / "run.sh", 0o755)
    (root / "empty").mkdir()
    return files


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = b"x",
           linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind != tarfile.REGTYPE:
        data = None
    return info, data


# --- round trip -------------------------------------------------------------------------------

def test_build_then_extract_gives_the_same_tree(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files = make_tree(src)
    buf = io.BytesIO()
    result = build(str(src), buf)
    data = buf.getvalue()
    assert result.archive_bytes == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.content_bytes == sum(len(v) for v in files.values())
    assert result.skipped == []
    out = tmp_path / "out"
    out.mkdir()
    count = extract(io.BytesIO(data), str(out), "photos")
    assert count == result.members
    for rel, content in files.items():
        assert (out / "photos").joinpath(*rel.split("/")).read_bytes() == content
    assert (out / "photos" / "empty").is_dir()
    assert os.stat(out / "photos" / "run.sh").st_mode & 0o100
    assert stat.S_IMODE(os.stat(out / "photos" / "a.txt").st_mode) == 0o600
    assert os.listdir(out) == ["photos"]


def test_build_is_deterministic_and_carries_no_owner(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    one, two = io.BytesIO(), io.BytesIO()
    build(str(src), one)
    build(str(src), two)
    assert one.getvalue() == two.getvalue()
    with tarfile.open(fileobj=io.BytesIO(one.getvalue())) as tar:
        assert all(m.uid == 0 and m.gid == 0 and not m.uname for m in tar.getmembers())


def test_build_leaves_out_links_and_special_files_and_says_so(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "real.txt").write_bytes(b"real")
    os.symlink("/etc/passwd", src / "link")
    os.mkfifo(src / "fifo")
    buf = io.BytesIO()
    result = build(str(src), buf)
    assert sorted(result.skipped) == ["fifo", "link"]
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        assert tar.getnames() == ["real.txt"]


def test_build_refuses_a_name_the_receiver_would_refuse(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad\x1b[2Jname").write_bytes(b"x")
    with pytest.raises(ArchiveError) as info:
        build(str(src), io.BytesIO())
    assert "\x1b" not in str(info.value)


def test_build_refuses_a_missing_directory(tmp_path):
    with pytest.raises(TransferError):
        build(str(tmp_path / "nope"), io.BytesIO())


# --- hostile archives -------------------------------------------------------------------------

HOSTILE = {
    "traversal": [member("../evil")],
    "traversal inside": [member("a/../../evil")],
    "absolute": [member("/etc/evil")],
    "symlink": [member("link", tarfile.SYMTYPE, linkname="/etc/passwd")],
    "symlink then write through it": [member("d", tarfile.SYMTYPE, linkname="/tmp"),
                                      member("d/evil")],
    "hardlink": [member("h", tarfile.LNKTYPE, linkname="/etc/passwd")],
    "char device": [member("tty", tarfile.CHRTYPE)],
    "block device": [member("sda", tarfile.BLKTYPE)],
    "fifo": [member("pipe", tarfile.FIFOTYPE)],
    "contiguous": [member("c", tarfile.CONTTYPE)],
    "escape in name": [member("nice\x1b]0;pwned\x07.txt")],
    "bidi in name": [member("txt.\u202eexe")],
    "backslash": [member("a\\..\\evil")],
    "dot component": [member("a/./b")],
    "empty component": [member("a//b")],
    "duplicate": [member("same"), member("same")],
    "file under a file": [member("f"), member("f/g")],
    "file where a directory is": [member("d/g"), member("d")],
    "too deep": [member("/".join(["d"] * 65) + "/f")],
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_archives_are_refused_before_anything_is_written(tmp_path, name):
    parent = tmp_path / "parent"
    parent.mkdir()
    data = tar_bytes(HOSTILE[name])
    with pytest.raises(ArchiveError) as info:
        extract(io.BytesIO(data), str(parent), "incoming")
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message and "\x07" not in message
    assert "\u202e" not in message
    assert os.listdir(parent) == []
    assert not os.path.exists(tmp_path / "evil")


def test_a_huge_member_count_is_refused_without_reading_the_rest(tmp_path):
    limits = ArchiveLimits(max_members=50)
    data = tar_bytes([member(f"f{i}") for i in range(2000)])
    with pytest.raises(ArchiveError) as info:
        extract(io.BytesIO(data), str(tmp_path), "incoming", limits=limits)
    assert "more than 50 members" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_a_total_size_over_the_limit_is_refused(tmp_path):
    limits = ArchiveLimits(max_total_size=100)
    data = tar_bytes([member("a", data=b"x" * 60), member("b", data=b"x" * 60)])
    with pytest.raises(ArchiveError, match="more than 100 bytes"):
        extract(io.BytesIO(data), str(tmp_path), "incoming", limits=limits)
    assert os.listdir(tmp_path) == []


def test_limits_at_the_bound_are_accepted(tmp_path):
    limits = ArchiveLimits(max_members=3, max_total_size=3)
    data = tar_bytes([member("a"), member("b"), member("c")])
    assert extract(io.BytesIO(data), str(tmp_path), "incoming", limits=limits) == 3


@pytest.mark.parametrize("data", [b"", b"not a tar archive at all" * 40, os.urandom(1024)])
def test_data_that_is_not_an_archive_is_refused(tmp_path, data):
    with pytest.raises(ArchiveError):
        extract(io.BytesIO(data), str(tmp_path), "incoming")
    assert os.listdir(tmp_path) == []


def test_a_truncated_archive_leaves_nothing(tmp_path):
    data = tar_bytes([member("a", data=b"x" * 5000), member("b", data=b"y" * 5000)])
    with pytest.raises(ArchiveError):
        extract(io.BytesIO(data[:3000]), str(tmp_path), "incoming")
    assert os.listdir(tmp_path) == []


def test_an_existing_destination_is_never_merged_into(tmp_path):
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "mine").write_bytes(b"mine")
    with pytest.raises(TargetExists):
        extract(io.BytesIO(tar_bytes([member("mine")])), str(tmp_path), "incoming")
    assert (tmp_path / "incoming" / "mine").read_bytes() == b"mine"
    assert sorted(os.listdir(tmp_path)) == ["incoming"]


@pytest.mark.parametrize("name", ["../x", "/etc/x", ".ssh", "a\x1bb"])
def test_a_hostile_destination_name_is_refused(tmp_path, name):
    with pytest.raises(UnsafeName):
        extract(io.BytesIO(tar_bytes([member("a")])), str(tmp_path), name)
    assert os.listdir(tmp_path) == []


# --- the member checker, as a property --------------------------------------------------------

names = st.lists(st.sampled_from(["a", "b", "..", ".", "", "/", "\\", "\x00", "\x1b", "é",
                                  "\u202e", "c.txt"]), min_size=1, max_size=6).map("".join)
kinds = st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                         tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE,
                         tarfile.CONTTYPE, b"x", b"g"])


@FUZZ
@given(st.lists(st.tuples(names, kinds, st.integers(0, 10)), max_size=12))
def test_accepted_members_always_stay_inside_and_are_plain(members):
    checker = MemberChecker(limits=ArchiveLimits(max_members=8, max_total_size=30))
    seen = set()
    root = "/unpack/here"
    for name, kind, size in members:
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, size
        try:
            parts = checker.check(info)
        except ArchiveError:
            continue  # the whole archive would be refused; later members do not matter
        path = os.path.join(root, *parts)
        assert os.path.normpath(path) == path and path.startswith(root + "/")
        assert kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)
        assert parts not in seen
        seen.add(parts)
    assert checker.count <= len(members)


# --- a directory through the transfer machines ------------------------------------------------

def send_directory(data: bytes, out, name: str = "photos", **sink_kw):
    offer = make_offer("ab" * 16, kind="directory", name=name, size=len(data),
                       mime="application/x-tar", sha256=hashlib.sha256(data).hexdigest(),
                       chunk=4096)
    sender = Sender(offer, BytesSource(data), 0.0)
    receiver = Receiver(sender.take_outgoing()[0], 0.0)
    receiver.accept(DirectorySink(str(out), offer.name, size=offer.size, **sink_kw), 0.0,
                    window=8)
    for _ in range(10_000):
        moved = False
        for a, b in ((receiver, sender), (sender, receiver)):
            for msg in a.take_outgoing():
                b.handle(msg, 0.0)
                moved = True
        if not moved:
            break
    return sender, receiver


def test_a_directory_arrives_through_the_transfer(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files = make_tree(src)
    buf = io.BytesIO()
    build(str(src), buf)
    out = tmp_path / "out"
    out.mkdir()
    sender, receiver = send_directory(buf.getvalue(), out)
    assert sender.state is SenderState.DONE and receiver.state is ReceiverState.DONE
    assert os.listdir(out) == ["photos"]
    assert (out / "photos" / "sub" / "b.bin").read_bytes() == files["sub/b.bin"]


def test_a_hostile_directory_fails_both_sides_and_leaves_nothing(tmp_path):
    data = tar_bytes([member("ok.txt"), member("../../evil")])
    out = tmp_path / "out"
    out.mkdir()
    sender, receiver = send_directory(data, out)
    assert receiver.state is ReceiverState.FAILED and sender.state is SenderState.FAILED
    events = sender.take_events()
    assert events[-1].code == "refused" and "leaving its directory" in events[-1].reason
    assert os.listdir(out) == []
    assert not (tmp_path / "evil").exists()


def test_directory_sink_refuses_an_existing_directory_at_once(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(TargetExists):
        DirectorySink(str(tmp_path), "photos", size=10)
    assert os.listdir(tmp_path) == ["photos"]


def test_archive_module_exports():
    assert archive.DEFAULT_LIMITS.max_members == 100_000


def sparse_bomb(real_size: int) -> bytes:
    """A PAX 1.0 sparse member: one data byte in the archive, ``real_size`` bytes of zeros
    once unpacked (tarfile reports it as a regular file)."""
    sparse_map = b"1\n0\n1\n".ljust(512, b"\0")
    payload = sparse_map + b"A".ljust(512, b"\0")
    info = tarfile.TarInfo("bomb")
    info.size = len(payload)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": "bomb", "GNU.sparse.realsize": str(real_size)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_a_sparse_member_cannot_write_more_than_the_offer(tmp_path):
    """A 10 KiB offer must not unpack to 64 MiB (or 64 GiB) of zeros on the receiver's
    disk: sparse members are refused, and plain members cannot add up past the archive."""
    data = sparse_bomb(64 * 1024 * 1024)
    assert len(data) < 16 * 1024
    out = tmp_path / "out"
    out.mkdir()
    sender, receiver = send_directory(data, out)
    assert receiver.state is ReceiverState.FAILED and sender.state is SenderState.FAILED
    assert "sparse" in sender.take_events()[-1].reason
    assert os.listdir(out) == []


def test_members_cannot_add_up_to_more_than_the_archive(tmp_path):
    data = tar_bytes([member("a.txt", data=b"x" * 4096)])
    checked = MemberChecker(limits=ArchiveLimits(max_total_size=len(data)))
    info = tarfile.TarInfo("b.txt")
    info.size = len(data) + 1
    with pytest.raises(ArchiveError, match="add up to more"):
        checked.check(info)
    extract(io.BytesIO(data), str(tmp_path), "fine")  # a plain archive is within its size
    assert (tmp_path / "fine" / "a.txt").read_bytes() == b"x" * 4096


def test_a_file_swapped_for_a_symlink_while_packing_is_refused_not_followed(tmp_path,
                                                                           monkeypatch):
    """Someone who can write into the folder being sent swaps a checked file for a
    symlink between the walk and the read: the link is never followed."""
    import io

    from msgrlib.transfer.errors import SourceError
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("mine")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the peer")
    walked = archive._walk(str(src), [])
    (src / "notes.txt").unlink()
    (src / "notes.txt").symlink_to(secret)
    monkeypatch.setattr(archive, "_walk", lambda source, skipped: walked)
    out = io.BytesIO()
    with pytest.raises(SourceError, match="changed while it was being packed"):
        archive.build(str(src), out)
    assert b"not for the peer" not in out.getvalue()
