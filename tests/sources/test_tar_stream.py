"""x2i.sources.tar_stream against tarfile's stream mode, on every format tarfile writes (ustar, GNU, pax; long,
nested and non-ASCII names, directories, links, empty and block-sized files, a pax global header; gzip, bzip2 and
xz streams) and on damaged copies of them (cut at hundreds of offsets, single bytes changed): the same regular
files with the same bytes, every time; where tarfile fails, this fails too, and where tarfile stops quietly at a
corrupt header, this says so."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile

import numpy as np
import pytest

from x2i.sources.tar_stream import TarDamaged, tar_files

CAUGHT = (tarfile.TarError, EOFError)  # what the img2dataset reader counts as a damaged shard


def archive(fmt: int, seed: int = 0, pax_global: bool = False, specials_at: int | None = None) -> bytes:
    """Regular files (img2dataset's members, a nested one, an empty one, a 155-character name: ustar splits it
    into prefix and name, GNU writes a long-name header, pax a path record; beyond ustar also longer and non-ASCII
    names), with a v7 and a ustar directory, a symlink and a hard link after the `specials_at`-th file when given."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    headers = {"comment": "made by the test"} if pax_global else None
    kwargs = {"pax_headers": headers} if headers else {}
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kwargs) as tar:
        names = ["000000001.jpg", "000000001.txt", "000000001.json", "dir/sub/000000002.jpg", "empty.txt",
                 "d" * 90 + "/" + "n" * 60 + ".jpg"]  # > 100: the ustar prefix, a GNU long name, a pax path
        if fmt != tarfile.USTAR_FORMAT:
            names += ["x" * 300 + ".jpg", "caf\u00e9/\u5199\u771f.jpg"]  # beyond ustar: long and non-ASCII
        sizes = [1000, 7, 40, 512, 0, 511, 513, 1024]
        for k, name in enumerate(names):
            data = rng.integers(0, 256, sizes[k % len(sizes)], dtype=np.uint8).tobytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            if k == specials_at:
                v7 = tarfile.TarInfo("old-style-dir/")  # a v7 directory: a plain-file type, a trailing slash
                v7.type = tarfile.AREGTYPE
                tar.addfile(v7)
                folder = tarfile.TarInfo("dir")
                folder.type = tarfile.DIRTYPE
                tar.addfile(folder)
                link = tarfile.TarInfo("link.jpg")
                link.type, link.linkname = tarfile.SYMTYPE, "000000001.jpg"
                tar.addfile(link)
                hard = tarfile.TarInfo("hard.jpg")
                hard.type, hard.linkname = tarfile.LNKTYPE, "000000001.jpg"
                tar.addfile(hard)
    return buf.getvalue()


def by_tarfile(data: bytes) -> tuple[list[tuple[str, bytes]], bool]:
    out = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
            for member in tar:
                if member.isfile():
                    out.append((member.name, tar.extractfile(member).read()))
    except CAUGHT:
        return out, True
    return out, False


def by_us(data: bytes, raw_cls=io.BytesIO) -> tuple[list[tuple[str, bytes]], bool]:
    out = []
    try:
        for item in tar_files(raw_cls(data)):
            out.append(item)
    except CAUGHT:
        return out, True
    return out, False


FORMATS = (("ustar", tarfile.USTAR_FORMAT), ("gnu", tarfile.GNU_FORMAT), ("pax", tarfile.PAX_FORMAT))
ARCHIVES = {name: archive(fmt) for name, fmt in FORMATS}  # regular files only, as img2dataset writes
ARCHIVES.update({f"{name}+links": archive(fmt, specials_at=2) for name, fmt in FORMATS})
ARCHIVES["ustar+links-last"] = archive(tarfile.USTAR_FORMAT, specials_at=5)
ARCHIVES["pax+global"] = archive(tarfile.PAX_FORMAT, pax_global=True)
ARCHIVES["pax.gz"] = gzip.compress(ARCHIVES["pax"])
ARCHIVES["gnu.bz2"] = bz2.compress(ARCHIVES["gnu"])
ARCHIVES["ustar.xz"] = lzma.compress(ARCHIVES["ustar"])
ARCHIVES["empty"] = archive(tarfile.USTAR_FORMAT)[-10240:]  # only the end-of-archive blocks


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_the_same_files_as_tarfile(name):
    data = ARCHIVES[name]
    theirs, failed = by_tarfile(data)
    assert not failed and (theirs or name == "empty")
    assert by_us(data) == (theirs, False)


class ShortReads(io.BytesIO):
    """A stream that returns at most 100 bytes a read, as a network stream may."""

    def read(self, n=-1):
        return super().read(100 if n is None or n < 0 else min(n, 100))


@pytest.mark.parametrize("name", ["ustar", "gnu", "pax.gz"])
def test_short_reads_give_the_same_files(name):
    assert by_us(ARCHIVES[name], ShortReads) == (by_tarfile(ARCHIVES[name])[0], False)


@pytest.mark.parametrize("name", ["ustar", "ustar+links", "gnu", "pax", "pax+global", "pax.gz"])
def test_damaged_copies_never_give_other_files(name):
    """Cut at many offsets and single bytes changed: the files read are tarfile's, byte for byte, and wherever
    tarfile raises, so does this."""
    data = ARCHIVES[name]
    rng = np.random.default_rng(1)
    cuts = sorted({*range(0, len(data), 97), *(b + d for b in range(0, len(data), 512) for d in (-1, 0, 1, 157))})
    copies = [data[:c] for c in cuts if 0 <= c < len(data)]
    for pos in rng.integers(0, len(data), 300):
        changed = bytearray(data)
        changed[pos] ^= int(rng.integers(1, 256))
        copies.append(bytes(changed))
    for copy in copies:
        theirs, they_failed = by_tarfile(copy)
        ours, we_failed = by_us(copy)
        assert ours == theirs
        assert we_failed or not they_failed


def test_a_corrupt_header_mid_archive_is_damage_not_a_quiet_end():
    """tarfile's stream mode ends quietly at a header failing its checksum after the first, so the members after
    it vanish without a word; here the walk raises (the shard is counted damaged)."""
    data = bytearray(ARCHIVES["ustar"])
    second = 512 + 1024  # the first member's header and its 1,000 bytes of data (two blocks)
    data[second + 10] ^= 0x41
    theirs, they_failed = by_tarfile(bytes(data))
    assert theirs and not they_failed  # tarfile: one file, no error
    with pytest.raises(TarDamaged, match="bad checksum"):
        list(tar_files(io.BytesIO(bytes(data))))


def test_empty_and_cut_streams():
    with pytest.raises(TarDamaged, match="empty file"):
        list(tar_files(io.BytesIO(b"")))
    with pytest.raises(TarDamaged, match="truncated header"):
        list(tar_files(io.BytesIO(ARCHIVES["ustar"][:300])))
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        list(tar_files(io.BytesIO(ARCHIVES["ustar"][:700])))


def test_a_signed_checksum_is_accepted_as_tarfile_accepts_it():
    """Some old tars summed the header as signed bytes: with a non-ASCII name the two sums differ."""
    import struct

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("caf\u00e9.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    data = bytearray(buf.getvalue())
    signed = 256 + sum(struct.unpack_from("148b8x356b", data))
    assert signed != 256 + sum(data[:148]) + sum(data[156:512])
    data[148:156] = b"%06o\0 " % signed
    assert by_tarfile(bytes(data)) == ([("caf\u00e9.jpg", b"abc")], False)
    assert by_us(bytes(data)) == ([("caf\u00e9.jpg", b"abc")], False)


def test_a_member_claiming_gigabytes_that_are_not_there_is_damage_read_in_bounded_chunks():
    """A header may claim up to 8 GiB with a valid checksum: the reads ask for at most 16 MiB at a time (a read
    allocates what it asks for), and the missing data is the error tarfile gives."""
    data = bytearray(ARCHIVES["ustar"][:512 + 1024])  # the first member's header and data
    data[124:136] = b"%011o\0" % (7 << 30)  # 7 GiB
    data[148:156] = b"        "
    data[148:156] = b"%06o\0 " % (sum(data[:512]))
    asked = []

    class Recording(io.BytesIO):
        def read(self, n=-1):
            asked.append(n)
            return super().read(n)

    assert by_tarfile(bytes(data)) == ([], True)
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        list(tar_files(Recording(bytes(data))))
    assert max(asked) <= 16 << 20


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT])
def test_img2dataset_members_never_need_tarfile(monkeypatch, fmt):
    """img2dataset's webdataset writer uses tarfile's default (pax) format, which writes plain headers for its
    short ASCII keys: the whole archive is read here, never handed over (the speed is the point)."""
    import x2i.sources.tar_stream as tar_stream

    def handed_over(*args):
        raise AssertionError("handed to tarfile")

    monkeypatch.setattr(tar_stream, "_by_tarfile", handed_over)
    buf = io.BytesIO()
    members = [(f"{k:09d}.{ext}", bytes([k % 251]) * (100 * k + len(ext))) for k in range(40)
               for ext in ("jpg", "txt", "json")]
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.uname = len(data), 1700000000, "img2dataset"
            tar.addfile(info, io.BytesIO(data))
    assert list(tar_files(io.BytesIO(buf.getvalue()))) == members
