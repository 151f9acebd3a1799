"""An independent decoder for the tests: ffmpeg itself (imageio-ffmpeg's static build, a test
dependency, so no system package is needed), reading a file to the end and describing it.

PyAV (which writes the simulator's clips) shares its libraries with nothing here; a second
decoder that is not ours is what says the files are what browsers and editors will see.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

STREAM = re.compile(r"^\s*Stream #0:\d+\S*: (Video|Audio): (\w+)(.*)$")


@dataclass(frozen=True)
class Probe:
    duration: float
    video_codec: str
    pix_fmt: str
    width: int
    height: int
    fps: str
    audio_codec: str
    sample_rate: int
    channels: str
    frames: int


def probe(path: Path, *, decode: bool = True) -> Probe:
    """Decode every frame of ``path`` (``-f null``) and read what ffmpeg says of its input.

    ``decode=False`` reads the container alone (``frames`` is then 0): for mp4.py's stand-ins,
    whose media data is deliberately no codec's."""
    output = ["-f", "null", "-"] if decode else []
    done = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "info", "-i",
         str(path), *output],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    log = done.stderr
    if decode:
        assert done.returncode == 0, log
        assert "error" not in log.lower(), log
    else:  # no output named: ffmpeg describes the input, then says it has nothing to do
        assert "Input #0" in log, log
    head = log.split("Stream mapping:")[0]
    hours, minutes, seconds = re.search(r"Duration: (\d+):(\d+):([\d.]+)", head).groups()  # type: ignore[union-attr]
    streams = {m.group(1): (m.group(2), m.group(3)) for line in head.splitlines()
               if (m := STREAM.match(line))}  # fmt: skip
    vcodec, vrest = streams["Video"]
    acodec, arest = streams["Audio"]
    size = re.search(r", (\d+)x(\d+)", vrest)
    assert size is not None, vrest
    frames = re.findall(r"frame=\s*(\d+)", log)
    return Probe(
        duration=int(hours) * 3600 + int(minutes) * 60 + float(seconds),
        video_codec=vcodec,
        pix_fmt=pix.group(1) if (pix := re.search(r"\b(yuv\w+|rgb\w+)", vrest)) else "none",
        width=int(size.group(1)),
        height=int(size.group(2)),
        fps=re.search(r"([\d.]+) fps", vrest).group(1),  # type: ignore[union-attr]
        audio_codec=acodec,
        sample_rate=int(re.search(r"(\d+) Hz", arest).group(1)),  # type: ignore[union-attr]
        channels=re.search(r"Hz, (\w+)", arest).group(1),  # type: ignore[union-attr]
        frames=int(frames[-1]) if frames and decode else 0,
    )
