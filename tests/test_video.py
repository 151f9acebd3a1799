"""The simulator's clips are real video: PyAV decodes them, probe and verify read them, they differ.

Every check decodes with PyAV (and ffmpeg's own decoder too): frame count, frame size and
rate, an AAC track, pictures that move and that differ between prompts. Clips are cached per
process, so the tests share the few they encode.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import ffmpeg
import httpx
import pytest
from conftest import ROOT, Repo

from reconciler.mp4 import Mp4Info, probe
from reconciler.sim import Simulator, font, video

KEY = "sim-key"
FAST = "veo-3.1-fast-generate-preview"
CAT = "A ginger cat asleep on a striped mat"
DOG = "A black dog running along a windy beach"


@dataclass
class Decoded:
    """What PyAV found in a clip: the streams' parameters, and the luma of a few frames."""

    width: int
    height: int
    fps: float
    pix_fmt: str
    codec: str
    frames: int
    lumas: dict[int, bytes]  # frames 0, 12 and the last: the Y plane with its line padding
    audio_codec: str | None
    audio_rate: int | None
    audio_channels: int | None
    audio_seconds: float


def decode(data: bytes) -> Decoded:
    with av.open(io.BytesIO(data), mode="r") as container:
        vstream = container.streams.video[0]
        astreams = container.streams.audio
        lumas, frames, last = {}, 0, None
        for frame in container.decode(video=0):
            if frames in (0, 12):
                lumas[frames] = bytes(frame.planes[0])
            frames, last = frames + 1, frame
        if last is not None:
            lumas[-1] = bytes(last.planes[0])
        out = Decoded(
            width=vstream.codec_context.width,
            height=vstream.codec_context.height,
            fps=float(vstream.average_rate or 0),
            pix_fmt=str(vstream.codec_context.pix_fmt),
            codec=vstream.codec_context.name,
            frames=frames,
            lumas=lumas,
            audio_codec=astreams[0].codec_context.name if astreams else None,
            audio_rate=astreams[0].sample_rate if astreams else None,
            audio_channels=astreams[0].codec_context.channels if astreams else None,
            audio_seconds=0.0,
        )
    if astreams:
        with av.open(io.BytesIO(data), mode="r") as container:
            samples = sum(f.samples for f in container.decode(audio=0))
        out.audio_seconds = samples / (out.audio_rate or 1)
    return out


def differing(a: bytes, b: bytes) -> float:
    """The share of luma samples that differ by more than a compression wobble."""
    return sum(abs(x - y) > 40 for x, y in zip(a, b, strict=True)) / len(a)


def top_boxes(data: bytes) -> list[bytes]:
    kinds, pos = [], 0
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        kinds.append(kind)
        pos += size
    return kinds


def clip(width: int = 1280, height: int = 720, duration: float = 4, title: str = CAT) -> bytes:
    """The clip the simulator would serve for this request (so the two share the cache)."""
    return video.clip(
        width=width, height=height, duration_s=duration, title=title, note=f"#{video.digest(title)}"
    )


# -- the encoder --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "duration"),
    [
        (1280, 720, 4),
        (720, 1280, 6),
        # The API makes these 8 s long; the encoder does not care, and a short one is cheaper.
        (1920, 1080, 2),
        (3840, 2160, 1),
    ],
)
def test_clip_decodes_at_the_requested_size(width: int, height: int, duration: float) -> None:
    """A clip decodes to duration×24 frames of exactly the frame size, with a whole AAC track."""
    got = decode(clip(width, height, duration))
    assert (got.codec, got.pix_fmt, got.width, got.height) == ("h264", "yuv420p", width, height)
    assert got.fps == 24 and got.frames == duration * 24
    assert (got.audio_codec, got.audio_rate, got.audio_channels) == ("aac", 48_000, 2)
    assert got.audio_seconds == pytest.approx(duration, abs=0.05)


def test_clip_is_built_for_streaming() -> None:
    """moov comes before mdat (faststart), so a browser can start playing while it downloads."""
    kinds = top_boxes(clip())
    assert kinds[0] == b"ftyp" and kinds.index(b"moov") < kinds.index(b"mdat")


def test_picture_moves_and_prompts_differ() -> None:
    """Frames change over time, and two prompts give visibly different pictures."""
    cat, dog = decode(clip(title=CAT)), decode(clip(title=DOG))
    assert differing(cat.lumas[0], cat.lumas[12]) > 0.01  # the sweep and the counter moved
    assert differing(cat.lumas[0], dog.lumas[0]) > 0.01  # other words on the title panel
    assert cat.lumas[-1] != cat.lumas[0]
    assert cat.frames == dog.frames == 96


@pytest.mark.slow  # a second process is the point
def test_same_request_same_bytes_encoded_once() -> None:
    """Asking twice returns the cached clip; another process encodes the very same bytes."""
    first = clip(duration=6, title=DOG)
    assert clip(duration=6, title=DOG) is first
    code = (
        "import hashlib, sys; from reconciler.sim import video; "
        f"data = video.clip(width=1280, height=720, duration_s=6, title={DOG!r}, "
        f"note={'#' + video.digest(DOG)!r}); print(hashlib.sha256(data).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.stdout.strip() == hashlib.sha256(first).hexdigest()


def test_probe_reads_real_clips(tmp_path: Path) -> None:
    """probe reads duration, size and audio from what libx264 and PyAV wrote, bytes or path."""
    data = clip(720, 1280, 6)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    assert probe(data) == probe(path) == Mp4Info(6.0, 720, 1280, True)
    with pytest.raises(ValueError, match="truncated"):
        probe(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("A cat on a mat", "A CAT ON A MAT"),
        ("  Café\tcrème,\n50% off!  ", "CAFE CREME, 50% OFF!"),
        ("Snow ❄ falls [slowly]", "SNOW FALLS ?SLOWLY?"),
    ],
)
def test_font_draws_what_it_can(text: str, shown: str) -> None:
    """Labels are folded to the font's capitals; accents go, unknown characters become '?'."""
    assert font.printable(text) == shown
    rows = font.render(text, scale=3, fg=235, bg=16)
    assert len(rows) == 7 * 3
    assert {len(r) for r in rows} == {len(shown) * font.CELL_WIDTH * 3}


@pytest.mark.parametrize(
    ("text", "cols", "lines", "wrapped"),
    [
        ("a cat on a mat", 20, 2, ["A CAT ON A MAT"]),
        ("a cat on a mat", 8, 2, ["A CAT ON", "A MAT"]),
        ("slow drone shot over a misty forest", 10, 2, ["SLOW DRONE", "SHOT..."]),
        ("supercalifragilistic words", 10, 2, ["SUPERCALIF", "WORDS"]),
        ("supercalifragilistic words and more", 10, 1, ["SUPERCA..."]),
        ("", 10, 2, [""]),
    ],
)
def test_titles_wrap_by_words(text: str, cols: int, lines: int, wrapped: list[str]) -> None:
    """A prompt fills at most `lines` lines of `cols` characters, whole words, '...' when cut."""
    assert font.wrap(text, cols=cols, lines=lines) == wrapped


def test_clip_refuses_impossible_sizes() -> None:
    """Odd frame sizes (yuv420p needs even ones) and empty durations are refused up front."""
    with pytest.raises(ValueError, match="even"):
        video.clip(width=1281, height=720, duration_s=4, title="x")
    with pytest.raises(ValueError, match="duration"):
        video.clip(width=1280, height=720, duration_s=0, title="x")


def test_ffmpeg_agrees(tmp_path: Path) -> None:
    """ffmpeg sees H.264 yuv420p at 24 fps and AAC 48 kHz stereo, and decodes every frame."""
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip())
    seen = ffmpeg.probe(path)
    assert (seen.video_codec, seen.pix_fmt, seen.fps) == ("h264", "yuv420p", "24")
    assert seen.frames == 96
    assert (seen.audio_codec, seen.sample_rate, seen.channels) == ("aac", 48000, "stereo")


# -- the simulator ------------------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(latency=0.05) as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, headers={"x-goog-api-key": KEY}, timeout=30) as c:
        yield c


def generate(c: httpx.Client, prompt: str, **params: Any) -> tuple[str, str, bytes]:
    """Submit, wait, download: the operation id, the video's URI and the served bytes."""
    instance: dict[str, Any] = {"prompt": prompt}
    if "video" in params:
        instance["video"] = {"uri": params.pop("video")}
    r = c.post(f"/v1beta/models/{FAST}:predictLongRunning", json={"instances": [instance],
                                                                 "parameters": params})  # fmt: skip
    assert r.status_code == 200, r.text
    name = r.json()["name"]
    deadline = time.monotonic() + 10
    while not (done := c.get(f"/v1beta/{name}").json()).get("done"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    uri = done["response"]["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"]
    got = c.get(uri)
    assert got.status_code == 200 and got.headers["content-type"] == "video/mp4"
    return name.rsplit("/", 1)[1], uri, got.content


def test_simulator_serves_playable_video_by_default(sim: Simulator, client: httpx.Client) -> None:
    """Simulator() serves real clips of the request's size and length, distinct per operation."""
    assert sim.video == "real"
    op1, _, first = generate(client, CAT, durationSeconds=6, aspectRatio="9:16")
    op2, _, second = generate(client, CAT, durationSeconds=6, aspectRatio="9:16")
    a, b = decode(first), decode(second)
    assert (a.width, a.height, a.frames, a.audio_codec) == (720, 1280, 144, "aac")
    assert first != second and first.endswith(op1.encode()) and second.endswith(op2.encode())
    assert a.lumas == b.lumas  # the same request shows the same picture
    _, _, third = generate(client, DOG, durationSeconds=6, aspectRatio="9:16")
    assert differing(a.lumas[0], decode(third).lumas[0]) > 0.01


def test_extension_is_source_plus_seven_seconds(client: httpx.Client) -> None:
    """A video-to-video result decodes as the source's frames plus 7 s of them (4 s → 11 s)."""
    _, uri, _ = generate(client, CAT, durationSeconds=4)
    _, _, extended = generate(client, "The cat wakes up and stretches", video=uri)
    got = decode(extended)
    assert (got.width, got.height, got.frames) == (1280, 720, 11 * 24)
    assert probe(extended).duration_s == 11


def test_video_size_means_stand_ins() -> None:
    """video_size or video='standin' choose stand-ins; real clips cannot be sized."""
    assert Simulator(video_size=1000).video == "standin"
    assert Simulator(video="standin").video == "standin"
    with pytest.raises(ValueError, match="video_size"):
        Simulator(video="real", video_size=1000)
    with pytest.raises(ValueError, match="real or standin"):
        Simulator(video="fake")


# -- end to end ---------------------------------------------------------------------------------

SPECS = {
    "specs/wide.yaml": f"name: wide\nmodel: {FAST}\nprompt: {CAT}\ndurationSeconds: 4\n",
    "specs/tall.yaml": (
        f"name: tall\nmodel: {FAST}\nprompt: {DOG}\naspectRatio: '9:16'\ndurationSeconds: 6\n"
    ),
    "specs/longer.yaml": (
        f"name: longer\nmodel: {FAST}\nprompt: The dog turns and barks at the waves.\n"
        "video:\n  uri: https://api.gptproto.com/v1beta/files/elsewhere:download?alt=media\n"
    ),
}


@pytest.mark.slow
def test_apply_sim_writes_playable_videos_that_verify(offline_repo: Repo) -> None:
    """apply --sim writes clips that decode at each spec's size and length; verify --sim passes."""
    for rel, text in SPECS.items():
        offline_repo.write(rel, text)
    result = offline_repo.run("apply", "--sim", "--yes")
    assert result.returncode == 0, result.stderr
    folder = offline_repo.path / "state" / "sim" / "videos"
    expected = {
        "wide": (1280, 720, 4 * 24),
        "tall": (720, 1280, 6 * 24),
        "longer": (1280, 720, 360),
    }
    for name, (width, height, frames) in expected.items():
        (path,) = folder.glob(f"{name}.*.mp4")
        got = decode(path.read_bytes())
        assert (got.width, got.height, got.frames, got.audio_codec) == (
            width,
            height,
            frames,
            "aac",
        )
    verified = offline_repo.run("verify", "--sim")
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
def test_without_pyav_one_warning_and_stand_ins(offline_repo: Repo) -> None:
    """With PyAV not importable, apply --sim warns once, serves stand-ins and still succeeds."""
    offline_repo.write("specs/wide.yaml", SPECS["specs/wide.yaml"])
    no_av = "import sys; sys.modules['av'] = None; from reconciler.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", no_av, "apply", "--sim", "--yes"],
        cwd=offline_repo.path,
        env=offline_repo.env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("PyAV") == 1 and "Traceback" not in result.stderr
    (path,) = (offline_repo.path / "state" / "sim" / "videos").glob("wide.*.mp4")
    assert probe(path) == Mp4Info(4.0, 1280, 720, True)
    assert path.stat().st_size == 48 * 1024  # a stand-in's size, not an encoded clip's
