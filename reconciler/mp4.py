"""Just enough ISO-BMFF (MP4) to write stand-in videos and read back what a downloaded file holds.

The simulator's real clips are encoded with PyAV (sim/video.py); ``make_mp4`` writes its
stand-ins: files that look like Veo's output to every tool that checks the container (duration,
frame size, an H.264 video track and an AAC audio track) around deterministic pseudo-random media
data, of exactly the size asked for and in microseconds, with no codec. Tests that download
hundreds of videos, a benchmark that needs a 256 MiB file, and a machine without PyAV use them.

The reconciler needs to check that a downloaded file really is the video it asked for (right
duration and size, not a truncated body or an HTML error page), without ffprobe: ``probe`` walks
the boxes and reads the headers, seeking over the media data so a large file is never loaded.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

VIDEO_FPS = 24
AUDIO_RATE = 48_000
_AAC_FRAME = 1024  # PCM samples per AAC frame
_MOVIE_TIMESCALE = 1000
_MAX_MOOV = 64 << 20  # a real moov is kilobytes; refuse to buffer an absurd one
_UNITY = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


@dataclass(frozen=True)
class Mp4Info:
    """What probe read: movie duration, the video track's frame size, whether a sound track exists."""

    duration_s: float
    width: int
    height: int
    has_audio: bool


def _box(kind: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _full(kind: bytes, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", flags), *parts)  # version 0


def _h264_params(width: int, height: int) -> tuple[bytes, bytes]:
    """A baseline-profile SPS and PPS for the frame size, so demuxers that parse them agree."""

    def rbsp(nal_header: int, write: list[tuple[int, int]]) -> bytes:
        bits: list[int] = []
        for n, v in write:
            if n < 0:  # unsigned Exp-Golomb
                v += 1
                n = 2 * v.bit_length() - 1
            bits.extend((v >> i) & 1 for i in range(n - 1, -1, -1))
        bits.append(1)  # rbsp_stop_one_bit
        bits.extend([0] * (-len(bits) % 8))
        raw = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))
        out, zeros = bytearray([nal_header]), 0
        for b in raw:  # emulation prevention, so no start code appears inside the NAL unit
            if zeros >= 2 and b <= 3:
                out.append(3)
                zeros = 0
            out.append(b)
            zeros = zeros + 1 if b == 0 else 0
        return bytes(out)

    mbw, mbh = -(-width // 16), -(-height // 16)
    crop_r, crop_b = (mbw * 16 - width) // 2, (mbh * 16 - height) // 2
    level = 51 if width * height > 1920 * 1088 else 40
    ue = -1  # marks an Exp-Golomb field
    crop = [(1, 1), (ue, 0), (ue, crop_r), (ue, 0), (ue, crop_b)] if crop_r or crop_b else [(1, 0)]
    # profile 66 (constrained baseline), level, ids, frame_num/POC type 2, one ref frame, size
    sps_head = [(8, 66), (8, 0xC0), (8, level), (ue, 0), (ue, 0), (ue, 2), (ue, 1), (1, 0)]
    sps = rbsp(0x67, [*sps_head, (ue, mbw - 1), (ue, mbh - 1), (1, 1), (1, 1), *crop, (1, 0)])
    # ids, CAVLC, one slice group, one ref, no weighting, QP 26, deblocking control present
    pps_fields = [(ue, 0), (ue, 0), (1, 0), (1, 0), (ue, 0), (ue, 0), (ue, 0), (1, 0), (2, 0)]
    pps = rbsp(0x68, [*pps_fields, (ue, 0), (ue, 0), (ue, 0), (1, 1), (1, 0), (1, 0)])
    return sps, pps


def _stbl(entry: bytes, stts: list[tuple[int, int]], count: int, size: int, offset: int) -> bytes:
    # One chunk per track with equal-sized samples keeps the tables tiny.
    return _box(
        b"stbl",
        _full(b"stsd", 0, struct.pack(">I", 1), entry),
        _full(b"stts", 0, struct.pack(">I", len(stts)), *(struct.pack(">II", *e) for e in stts)),
        _full(b"stsc", 0, struct.pack(">IIII", 1, 1, count, 1)),
        _full(b"stsz", 0, struct.pack(">II", size, count)),
        _full(b"stco", 0, struct.pack(">II", 1, offset)),
    )


def _trak(
    track_id: int, ms: int, handler: bytes, timescale: int, ticks: int, stbl: bytes, w: int, h: int
) -> bytes:
    video = handler == b"vide"
    tkhd = _full(
        b"tkhd",
        3,  # enabled, in movie
        struct.pack(
            ">IIIII8xhhH2x", 0, 0, track_id, 0, ms, 0, int(not video), 0 if video else 0x100
        ),
        _UNITY,
        struct.pack(">II", w << 16, h << 16),
    )
    name = b"VideoHandler\0" if video else b"SoundHandler\0"
    hdlr = _full(b"hdlr", 0, struct.pack(">I4s12x", 0, handler), name)
    mdhd = _full(b"mdhd", 0, struct.pack(">IIIIHH", 0, 0, timescale, ticks, 0x55C4, 0))  # 'und'
    head = _full(b"vmhd", 1, bytes(8)) if video else _full(b"smhd", 0, bytes(4))
    dinf = _box(b"dinf", _full(b"dref", 0, struct.pack(">I", 1), _full(b"url ", 1)))
    return _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, _box(b"minf", head, dinf, stbl)))


def _prng(seed: bytes, n: int) -> bytes:
    base = hashlib.sha256(seed)
    out = bytearray()
    counter = 0
    while len(out) < n:
        h = base.copy()
        h.update(counter.to_bytes(8, "big"))
        out += h.digest()
        counter += 1
    return bytes(out[:n])


def make_mp4(
    *, duration_s: float, width: int, height: int, seed: bytes | str, size: int = 48 * 1024
) -> bytes:
    """A valid MP4 (H.264 24 fps + AAC 48 kHz stereo) of about ``size`` bytes, same args same bytes."""
    if duration_s <= 0 or width <= 0 or height <= 0:
        raise ValueError("duration, width and height must be positive")
    seed_b = seed.encode() if isinstance(seed, str) else seed
    ms = round(duration_s * _MOVIE_TIMESCALE)
    n_video = max(1, round(duration_s * VIDEO_FPS))
    audio_ticks = max(1, round(duration_s * AUDIO_RATE))
    n_audio = -(-audio_ticks // _AAC_FRAME)
    audio_stts = [(n_audio - 1, _AAC_FRAME), (1, audio_ticks - (n_audio - 1) * _AAC_FRAME)]
    sps, pps = _h264_params(width, height)
    avcc = _box(
        b"avcC",
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]),
        struct.pack(">H", len(sps)),
        sps,
        b"\x01",
        struct.pack(">H", len(pps)),
        pps,
    )
    avc1 = _box(
        b"avc1",
        bytes(6),
        struct.pack(">H16xHHIIIH32xHh", 1, width, height, 0x480000, 0x480000, 0, 1, 0x18, -1),
        avcc,
    )
    # AudioSpecificConfig 0x1190: AAC-LC, 48 kHz, two channels.
    dcd = bytes([0x40, 0x15, 0, 0, 0]) + struct.pack(">II", 128_000, 128_000) + b"\x05\x02\x11\x90"
    es = struct.pack(">HB", 1, 0) + bytes([4, len(dcd)]) + dcd + b"\x06\x01\x02"
    esds = _full(b"esds", 0, bytes([3, len(es)]), es)
    mp4a = _box(b"mp4a", bytes(6), struct.pack(">H8xHH4xI", 1, 2, 16, AUDIO_RATE << 16), esds)
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"avc1", b"mp41")

    def moov(v_size: int, a_size: int, v_off: int, a_off: int) -> bytes:
        mvhd = _full(
            b"mvhd",
            0,
            struct.pack(">IIIII", 0, 0, _MOVIE_TIMESCALE, ms, 0x10000),
            struct.pack(">H10x", 0x100),
            _UNITY,
            bytes(24),
            struct.pack(">I", 3),
        )
        vstbl = _stbl(avc1, [(n_video, 1)], n_video, v_size, v_off)
        astbl = _stbl(mp4a, [e for e in audio_stts if e[0]], n_audio, a_size, a_off)
        return _box(
            b"moov",
            mvhd,
            _trak(1, ms, b"vide", VIDEO_FPS, n_video, vstbl, width, height),
            _trak(2, ms, b"soun", AUDIO_RATE, audio_ticks, astbl, 0, 0),
        )

    # The tables have fixed-width fields, so the moov size does not depend on the offsets.
    head = len(ftyp) + len(moov(0, 0, 0, 0)) + 8
    payload = max(size - head, n_video + n_audio)
    a_size = max(1, payload // 10 // n_audio)  # audio gets about a tenth, as AAC beside H.264
    v_size = max(1, (payload - a_size * n_audio) // n_video)
    mdat_head = struct.pack(">I4s", 8 + payload, b"mdat")
    return (
        ftyp
        + moov(v_size, a_size, head, head + v_size * n_video)
        + mdat_head
        + _prng(seed_b, payload)
    )


def _children(buf: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box in buf[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, pos)
        hdr = 8
        if size == 1:
            (size,), hdr = struct.unpack_from(">Q", buf, pos + 8), 16
        elif size == 0:
            size = end - pos
        if size < hdr or pos + size > end:
            raise ValueError(f"not an MP4 file: bad size of box {kind!r} at offset {pos}")
        yield kind, pos + hdr, pos + size
        pos += size


def _child(buf: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    return next(((s, e) for k, s, e in _children(buf, start, end) if k == kind), None)


def _parse_moov(moov: bytes) -> Mp4Info:
    duration: float | None = None
    width = height = 0
    has_audio = False
    for kind, s, e in _children(moov, 0, len(moov)):
        if kind == b"mvhd":
            if moov[s] == 1:
                scale, ticks = struct.unpack_from(">IQ", moov, s + 20)
            else:
                scale, ticks = struct.unpack_from(">II", moov, s + 12)
            if not scale:
                raise ValueError("not an MP4 file: mvhd timescale is 0")
            duration = ticks / scale
        elif kind == b"trak":
            mdia = _child(moov, s, e, b"mdia")
            hdlr = _child(moov, *mdia, b"hdlr") if mdia else None
            handler = moov[hdlr[0] + 8 : hdlr[0] + 12] if hdlr else b""
            has_audio = has_audio or handler == b"soun"
            tkhd = _child(moov, s, e, b"tkhd")
            if handler == b"vide" and tkhd:
                off = tkhd[0] + (88 if moov[tkhd[0]] == 1 else 76)
                w16, h16 = struct.unpack_from(">II", moov, off)
                width, height = round(w16 / 65536), round(h16 / 65536)
    if duration is None:
        raise ValueError("not an MP4 file: moov has no mvhd")
    return Mp4Info(duration_s=duration, width=width, height=height, has_audio=has_audio)


def _probe_stream(f: BinaryIO, total: int) -> Mp4Info:
    pos = 0
    moov: bytes | None = None
    while pos < total:
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"not an MP4 file: {len(head)} stray bytes at offset {pos}")
        size, kind = struct.unpack(">I4s", head)
        hdr = 8
        if size == 1:
            ext = f.read(8)
            if len(ext) < 8:
                raise ValueError(f"not an MP4 file: truncated box header at offset {pos}")
            (size,), hdr = struct.unpack(">Q", ext), 16
        elif size == 0:
            size = total - pos
        if not all(0x20 <= c < 0x7F for c in kind):
            raise ValueError(f"not an MP4 file: no box type at offset {pos}")
        if size < hdr:
            raise ValueError(f"not an MP4 file: box {kind!r} at offset {pos} has size {size}")
        if pos + size > total:  # a cut download ends inside mdat: say so rather than half-read it
            raise ValueError(
                f"not an MP4 file: box {kind!r} at offset {pos} needs {size} bytes but "
                f"only {total - pos} remain (truncated?)"
            )
        if kind == b"moov":
            if size - hdr > _MAX_MOOV:
                raise ValueError(f"not an MP4 file: moov box of {size} bytes")
            moov = f.read(size - hdr)
        pos += size
    if moov is None:
        raise ValueError("not an MP4 file: no moov box")
    try:
        return _parse_moov(moov)
    except (struct.error, IndexError, TypeError) as exc:
        raise ValueError(f"not an MP4 file: malformed moov ({exc})") from None


def probe(source: bytes | bytearray | memoryview | str | os.PathLike[str]) -> Mp4Info:
    """Duration, frame size and audio presence of an MP4 given as bytes or a file path."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return _probe_stream(io.BytesIO(data), len(data))
    with open(source, "rb") as f:
        return _probe_stream(f, os.fstat(f.fileno()).st_size)
