"""make_mp4 writes files whose container metadata is right, and probe reads it back safely."""

from __future__ import annotations

import struct
from pathlib import Path

import ffmpeg
import pytest

from reconciler.mp4 import Mp4Info, make_mp4, probe

SIZES = [(1280, 720), (720, 1280), (1920, 1080), (1080, 1920), (3840, 2160)]


def _top_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    out, pos = [], 0
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        out.append((kind, pos, size))
        pos += size
    return out


@pytest.mark.parametrize(("width", "height"), SIZES)
@pytest.mark.parametrize("duration", [4, 6, 8, 15])
def test_round_trip(width: int, height: int, duration: float) -> None:
    """probe reads back the duration, frame size and audio track make_mp4 wrote."""
    data = make_mp4(duration_s=duration, width=width, height=height, seed=b"op1")
    assert probe(data) == Mp4Info(duration_s=duration, width=width, height=height, has_audio=True)


def test_layout_and_size() -> None:
    """The file is ftyp, moov, mdat in that order and totals exactly the requested size."""
    data = make_mp4(duration_s=8, width=1280, height=720, seed=b"s", size=100_000)
    assert len(data) == 100_000
    assert [k for k, _, _ in _top_boxes(data)] == [b"ftyp", b"moov", b"mdat"]
    assert data[8:12] == b"isom" and b"avc1" in data[16:28] and b"mp41" in data[16:28]
    for box in (b"mvhd", b"tkhd", b"mdhd", b"hdlr", b"vmhd", b"smhd", b"dref", b"stsd", b"avc1"):
        assert box in data
    for box in (b"mp4a", b"esds", b"stts", b"stsc", b"stsz", b"stco", b"vide", b"soun"):
        assert box in data


def test_tiny_size_still_valid() -> None:
    """A size smaller than the headers still gives a valid file, just a larger one."""
    data = make_mp4(duration_s=8, width=1280, height=720, seed=b"s", size=10)
    assert len(data) > 10
    assert probe(data).duration_s == 8


def test_deterministic_and_seeded() -> None:
    """Same arguments give the same bytes; another seed gives other media bytes."""
    a = make_mp4(duration_s=8, width=1280, height=720, seed=b"abc123def456")
    assert a == make_mp4(duration_s=8, width=1280, height=720, seed=b"abc123def456")
    b = make_mp4(duration_s=8, width=1280, height=720, seed=b"abc123def457")
    assert a != b and len(a) == len(b)
    assert a[-1000:] != b[-1000:]


def test_probe_path_matches_bytes(tmp_path: Path) -> None:
    """probe accepts a path (str or Path) as well as bytes."""
    data = make_mp4(duration_s=6, width=720, height=1280, seed=b"x")
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    assert probe(path) == probe(str(path)) == probe(data) == probe(bytearray(data))


def test_probe_large_mdat_is_seeked_not_read(tmp_path: Path) -> None:
    """A 64-bit (size==1) mdat of 5 GiB in a sparse file is skipped over, not loaded."""
    data = make_mp4(duration_s=8, width=3840, height=2160, seed=b"x")
    head = data[: _top_boxes(data)[2][1]]  # ftyp + moov
    big = 5 << 30
    path = tmp_path / "big.mp4"
    with open(path, "wb") as f:
        f.write(head + struct.pack(">I4sQ", 1, b"mdat", big))
        f.truncate(len(head) + big)
    assert probe(path) == Mp4Info(8.0, 3840, 2160, True)


def test_probe_size_zero_box_runs_to_end() -> None:
    """A last box of size 0 extends to the end of the file."""
    data = bytearray(make_mp4(duration_s=4, width=1280, height=720, seed=b"x"))
    mdat_at = _top_boxes(bytes(data))[2][1]
    data[mdat_at : mdat_at + 4] = bytes(4)
    assert probe(bytes(data)).duration_s == 4


def test_probe_version1_headers() -> None:
    """Version-1 mvhd and tkhd (64-bit times) are read at their own offsets."""

    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I4s", 8 + len(payload), kind) + payload

    mvhd = box(b"mvhd", b"\x01\0\0\0" + struct.pack(">QQIQ", 0, 0, 90_000, 90_000 * 12) + bytes(80))
    tkhd_body = b"\x01\0\0\x03" + struct.pack(">QQIIQ", 0, 0, 1, 0, 12_000) + bytes(52)
    tkhd = box(b"tkhd", tkhd_body + struct.pack(">II", 640 << 16, 480 << 16))
    hdlr = box(b"hdlr", bytes(8) + b"vide" + bytes(13))
    moov = box(b"moov", mvhd + box(b"trak", tkhd + box(b"mdia", hdlr)))
    info = probe(box(b"ftyp", b"isom" + bytes(4)) + moov)
    assert info == Mp4Info(12.0, 640, 480, False)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>",
        b'{"error": {"code": 404, "message": "Requested entity was not found."}}',
        bytes(range(256)) * 8,
        b"\x00\x00\x00\x08free",  # a valid box, but no moov
        b"\x00\x00\x00\x04moov",  # size smaller than its header
    ],
)
def test_garbage_rejected(garbage: bytes) -> None:
    """Anything that is not an MP4 raises ValueError('not an MP4 file: ...')."""
    with pytest.raises(ValueError, match=r"^not an MP4 file: "):
        probe(garbage)


def test_truncated_file_rejected(tmp_path: Path) -> None:
    """A download cut in half is refused, from bytes and from a file."""
    data = make_mp4(duration_s=8, width=1280, height=720, seed=b"x")
    half = data[: len(data) // 2]
    with pytest.raises(ValueError, match="truncated"):
        probe(half)
    path = tmp_path / "half.mp4"
    path.write_bytes(half)
    with pytest.raises(ValueError, match=r"^not an MP4 file: "):
        probe(path)


@pytest.mark.parametrize(("width", "height", "duration"), [(1280, 720, 8), (1080, 1920, 15)])
def test_ffmpeg_agrees(tmp_path: Path, width: int, height: int, duration: float) -> None:
    """ffmpeg reads the stand-in's container as an H.264 24 fps video track and an AAC 48 kHz
    track with our metadata (its media data is no codec's: nothing is decoded)."""
    path = tmp_path / "v.mp4"
    path.write_bytes(make_mp4(duration_s=duration, width=width, height=height, seed=b"x"))
    seen = ffmpeg.probe(path, decode=False)
    assert seen.duration == pytest.approx(duration)
    assert (seen.video_codec, seen.width, seen.height, seen.fps) == ("h264", width, height, "24")
    assert (seen.audio_codec, seen.sample_rate, seen.channels) == ("aac", 48000, "stereo")
