"""Playable clips for the simulator: real H.264 + AAC MP4s that say which request they answer.

A simulated generation should end in a file you can open: ffmpeg decodes it, a browser plays it
while it downloads, and a glance tells two clips apart. So each clip is encoded with PyAV
(libx264, yuv420p, ``+faststart``; AAC 48 kHz stereo) at the request's exact frame size, 24 fps and
duration, and shows a test pattern: colour bars, the first words of the prompt with a short digest
of the whole prompt, a block sweeping across every two seconds, a frame counter and a progress bar,
over a one-second beep.

Encoding costs real time (about half a second for an 8 s 720p clip here, seconds for 4k), so the
picture is mostly still (x264 skips unchanged macroblocks cheaply), only the moving bands are
rewritten in the frame between frames, and finished clips are kept per (size, duration, text) in
this process. The real service never returns the same bytes twice, so ``tagged`` appends a
``free`` box naming the operation: same pixels, distinct files, no second encode. PyAV is
imported on first use; ``available`` says whether it can be.
"""

from __future__ import annotations

import array
import hashlib
import math
import os
import struct
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from reconciler.facts import FPS
from reconciler.mp4 import AUDIO_RATE

from . import font

# ultrafast + a still picture keeps 720p well under a second; a keyframe every 2 s lets a player seek.
_X264 = {"preset": "ultrafast", "crf": "28", "g": str(2 * FPS)}
_AAC_FRAME = 1024
_SWEEP_SECONDS = 2
_CACHE_CLIPS = 32  # finished clips kept in memory (an 8 s 4k clip is about 2 MB)

_BARS = [  # 75% colour bars, as RGB
    (0.75, 0.75, 0.75),
    (0.75, 0.75, 0.0),
    (0.0, 0.75, 0.75),
    (0.0, 0.75, 0.0),
    (0.75, 0.0, 0.75),
    (0.75, 0.0, 0.0),
    (0.0, 0.0, 0.75),
]
_BLOCK = (0.95, 0.85, 0.1)  # the sweeping block: bright yellow, so it moves in chroma too
_BLACK, _PANEL, _SWEEP_BG, _WHITE, _GREY = 16, 32, 48, 235, 170
_NEUTRAL = 128


def available() -> bool:
    """Whether PyAV can be imported here (without it the simulator serves stand-ins)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def digest(text: str) -> str:
    """A short fingerprint of a prompt, drawn beside its first words so near-twins differ."""
    return hashlib.sha256(text.encode()).hexdigest()[:6].upper()


def tagged(clip_bytes: bytes, tag: str) -> bytes:
    """The clip with a trailing ``free`` box holding ``tag``: players skip it, hashes differ."""
    payload = f"reconciler-sim {tag}".encode()
    return clip_bytes + struct.pack(">I4s", 8 + len(payload), b"free") + payload


_cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
_locks: dict[tuple[Any, ...], threading.Lock] = {}
_guard = threading.Lock()


def clip(*, width: int, height: int, duration_s: float, title: str, note: str = "") -> bytes:
    """An MP4 of this size and duration showing ``title`` (as much as fits) and ``note``.

    The same arguments give the same bytes, encoded once per process: callers asking at the same
    time wait for one encode.
    """
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"frame size must be positive and even, not {width}x{height}")
    if duration_s <= 0:
        raise ValueError("duration must be positive")
    key = (width, height, float(duration_s), title, note)
    with _guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        with _guard:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
        data = _encode(width, height, duration_s, title, note)
        with _guard:
            _cache[key] = data
            while len(_cache) > _CACHE_CLIPS:
                old, _ = _cache.popitem(last=False)
                _locks.pop(old, None)
        return data


def _yuv(rgb: tuple[float, float, float]) -> tuple[int, int, int]:
    """BT.709 limited-range Y, Cb, Cr of an RGB colour in 0..1 (what players assume for HD)."""
    r, g, b = rgb
    luma = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return (
        round(16 + 219 * luma),
        round(128 + 224 * (b - luma) / 1.8556),
        round(128 + 224 * (r - luma) / 1.5748),
    )


def _even(n: float) -> int:
    return max(2, int(n) // 2 * 2)


@dataclass(frozen=True)
class _Layout:
    """Where each band of the picture sits: rows [start, end) of the full-size luma plane."""

    width: int
    height: int
    scale: int  # pixels per font pixel in the title
    small: int  # pixels per font pixel in the info and counter lines
    lines: int  # title lines
    title: tuple[int, int]
    sweep: tuple[int, int]
    counter: tuple[int, int]
    progress: tuple[int, int]

    @classmethod
    def of(cls, width: int, height: int) -> _Layout:
        scale = max(1, min(width, height) // 90)
        small = max(1, scale // 2)
        lines = 3 if height > width else 2
        glyph, small_glyph = font.GLYPH_HEIGHT * scale, font.GLYPH_HEIGHT * small
        title_h = _even(3 * scale + lines * glyph + (lines - 1) * 2 * scale + small_glyph + scale)
        progress_h = _even(scale)
        counter_h = _even(small_glyph + 2 * small)
        sweep_h = _even(height / 8)
        bottom = [sweep_h, counter_h, progress_h]
        start = _even((height - title_h - sum(bottom)) * 0.9)  # bars above, a strip of them below
        bands, at = [], start
        for h in [title_h, *bottom]:
            bands.append((at, at + h))
            at += h
        if at > height:
            raise ValueError(f"frame {width}x{height} is too small for the test pattern")
        title, sweep, counter, progress = bands
        return cls(width, height, scale, small, lines, title, sweep, counter, progress)


def _centred(rows: list[bytes], width: int, bg: int) -> list[bytes]:
    pad = bytes([bg])
    out = []
    for row in rows:
        row = row[:width]
        left = (width - len(row)) // 2
        out.append(pad * left + row + pad * (width - left - len(row)))
    return out


class _Picture:
    """Builds the frame's planes: the still parts once, the moving bands per frame."""

    def __init__(self, lay: _Layout, frames: int, title: str, note: str) -> None:
        self.lay, self.frames = lay, frames
        w = lay.width
        cols = (w - 2 * lay.scale) // (font.CELL_WIDTH * lay.scale)
        self.title_lines = font.wrap(title, cols=cols, lines=lay.lines)
        self.note = note
        self.bars = [_bar_row(w, 0), _bar_row(w // 2, 1), _bar_row(w // 2, 2)]  # Y, Cb, Cr
        self.block = _yuv(_BLOCK)

    def still(self) -> list[list[bytes]]:
        """Every row of the three planes for frame 0."""
        lay, w = self.lay, self.lay.width
        y_rows = [self.bars[0]] * lay.height
        t0, t1 = lay.title
        y_rows[t0:t1] = self._title_rows()
        planes = [y_rows]
        for c in (1, 2):
            rows = [self.bars[c]] * (lay.height // 2)
            rows[t0 // 2 : lay.progress[1] // 2] = [bytes([_NEUTRAL]) * (w // 2)] * (
                (lay.progress[1] - t0) // 2
            )
            planes.append(rows)
        for plane, band in enumerate(self.moving(0)):
            for (start, _), rows in band:
                planes[plane][start : start + len(rows)] = rows
        return planes

    def _title_rows(self) -> list[bytes]:
        lay, w = self.lay, self.lay.width
        s = lay.scale
        blank = bytes([_PANEL]) * w
        rows = [blank] * (2 * s)
        for i, line in enumerate(self.title_lines):
            if i:
                rows += [blank] * (2 * s)
            rows += _centred(font.render(line, scale=s, fg=_WHITE, bg=_PANEL), w, _PANEL)
        rows += [blank] * s
        info = f"{lay.width}X{lay.height}  {FPS} FPS  {self.frames / FPS:g} S  {self.note}".strip()
        rows += _centred(font.render(info, scale=lay.small, fg=_GREY, bg=_PANEL), w, _PANEL)
        height = lay.title[1] - lay.title[0]
        return (rows + [blank] * height)[:height]

    def moving(self, i: int) -> list[list[tuple[tuple[int, int], list[bytes]]]]:
        """Per plane, the bands that change at frame ``i``: (rows in that plane, their bytes)."""
        lay, w = self.lay, self.lay.width
        period = _SWEEP_SECONDS * FPS
        bw = _even(w / 12)
        x = _even((i % period) / period * (w - bw))
        sweep = []
        for c, bg in enumerate((_SWEEP_BG, _NEUTRAL, _NEUTRAL)):
            div = 1 if c == 0 else 2
            row = bytes([bg]) * (x // div) + bytes([self.block[c]]) * (bw // div)
            row += bytes([bg]) * (w // div - len(row))
            s0, s1 = lay.sweep
            sweep.append(((s0 // div, s1 // div), [row] * ((s1 - s0) // div)))
        counter = f"{i + 1:03d}/{self.frames:03d}  {i / FPS:05.2f} S"
        c0, c1 = lay.counter
        text = _centred(font.render(counter, scale=lay.small, fg=_WHITE, bg=_BLACK), w, _BLACK)
        blank = bytes([_BLACK]) * w
        top = (c1 - c0 - len(text)) // 2
        counter_rows = ([blank] * top + text + [blank] * (c1 - c0))[: c1 - c0]
        filled = w * (i + 1) // self.frames
        p0, p1 = lay.progress
        bar = bytes([_WHITE]) * filled + bytes([_BLACK]) * (w - filled)
        return [
            [sweep[0], (lay.counter, counter_rows), (lay.progress, [bar] * (p1 - p0))],
            [sweep[1]],
            [sweep[2]],
        ]


def _bar_row(width: int, component: int) -> bytes:
    """One row of the seven colour bars in one plane (0 luma, 1 Cb, 2 Cr) of this width."""
    out = bytearray()
    for n, rgb in enumerate(_BARS):
        end = width * (n + 1) // len(_BARS)
        out += bytes([_yuv(rgb)[component]]) * (end - len(out))
    return bytes(out)


def _beep_second() -> bytes:
    """One second of float32 samples: a 0.1 s 1 kHz beep at -12 dBFS, faded in and out, then quiet."""
    n, beep, fade = AUDIO_RATE, AUDIO_RATE // 10, AUDIO_RATE // 200
    samples = array.array("f", bytes(4 * n))
    for k in range(beep):
        ramp = min(1.0, k / fade, (beep - k) / fade)
        samples[k] = 0.25 * ramp * math.sin(2 * math.pi * 1000 * k / AUDIO_RATE)
    return samples.tobytes()


def _encode(width: int, height: int, duration_s: float, title: str, note: str) -> bytes:
    import av

    frames = max(1, round(duration_s * FPS))
    total_samples = round(duration_s * AUDIO_RATE)
    picture = _Picture(_Layout.of(width, height), frames, title, note)
    second = _beep_second() * 2  # twice, so a frame that wraps past a second is one slice
    with tempfile.TemporaryDirectory(prefix="reconciler-sim-") as tmp:
        # +faststart rewrites the file to put moov first, which needs a real file to reopen.
        path = os.path.join(tmp, "clip.mp4")
        with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
            vstream = out.add_stream("libx264", rate=FPS, options=_X264)
            vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
            astream = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane, rows in zip(frame.planes, picture.still(), strict=True):
                _write_rows(plane, 0, rows)
            sent = 0
            for i in range(frames):
                if i:
                    # The encoder copied the previous frame: rewrite only what moves.
                    for plane, bands in zip(frame.planes, picture.moving(i), strict=True):
                        for (start, _), rows in bands:
                            _write_rows(plane, start, rows)
                frame.pts = i
                out.mux(vstream.encode(frame))
                # Audio up to the end of this frame, so the file interleaves as it plays. AAC
                # takes whole frames of 1024 samples; only the last may be shorter.
                last = i == frames - 1
                until = total_samples if last else min(total_samples, (i + 1) * AUDIO_RATE // FPS)
                while sent + _AAC_FRAME <= until or (last and sent < until):
                    n = min(_AAC_FRAME, until - sent)
                    out.mux(astream.encode(_audio_frame(av, second, sent, n)))
                    sent += n
            out.mux(vstream.encode(None))
            out.mux(astream.encode(None))
        with open(path, "rb") as f:
            return f.read()


def _write_rows(plane: Any, start: int, rows: list[bytes]) -> None:
    """Write rows into a frame plane from row ``start`` on, each padded to the plane's line size."""
    pad = bytes(plane.line_size - len(rows[0]))
    data = b"".join(row + pad for row in rows)
    at = start * plane.line_size
    memoryview(plane)[at : at + len(data)] = data


def _audio_frame(av: Any, second: bytes, start: int, n: int) -> Any:
    offset = (start % AUDIO_RATE) * 4
    chunk = second[offset : offset + n * 4]
    frame = av.AudioFrame(format="fltp", layout="stereo", samples=n)
    for plane in frame.planes:
        plane.update(chunk.ljust(plane.buffer_size, b"\0"))
    frame.sample_rate, frame.pts = AUDIO_RATE, start
    return frame
