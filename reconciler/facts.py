"""The API's facts, in one place: model ids, resolutions, durations, frame sizes, list prices.

What Veo 3.1 accepts and produces (see shared/veo-api.md) is read by the spec models, the
simulator and ``verify`` from here, so a new model or resolution is one edit. The simulator keeps
its own validation *rules* (it must catch the client getting the API wrong), but not its own copy of
these numbers. Nothing here does I/O or imports another module of the package.
"""

from __future__ import annotations

import re

MODELS = ("veo-3.1-generate-preview", "veo-3.1-fast-generate-preview")

ASPECT_RATIOS = ("16:9", "9:16")
DEFAULT_ASPECT_RATIO = "16:9"

# Frame size of a landscape (16:9) video per resolution; 9:16 swaps width and height.
RESOLUTIONS: dict[str, tuple[int, int]] = {
    "720p": (1280, 720),
    "1080p": (1920, 1080),
    "4k": (3840, 2160),
}
DEFAULT_RESOLUTION = "720p"
RESOLUTIONS_NEEDING_8S = ("1080p", "4k")

DURATIONS = (4, 6, 8)
DEFAULT_DURATION = 8
FPS = 24

PERSON_GENERATION = ("allow_all", "allow_adult")

# Video-to-video (extension): 720p, 8 s (or unset); the result is the source plus about 7 s.
EXTENSION_RESOLUTION = "720p"
EXTENSION_SECONDS = 7.0
MAX_EXTENDED_SECONDS = 148.0

# The provider keeps a generated file about 2 days after it finished (or was last used as a source).
REMOTE_FILE_SECONDS = 2 * 24 * 3600

IMAGE_MIME_TYPES = ("image/png", "image/jpeg")
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # the API's inline request limit
MAX_PROMPT_CHARS = 4096  # about 1,024 tokens, the documented prompt limit

# USD per second of generated video (Gemini API list prices, 2026-09; see veo-api.md).
# Resellers charge differently, which is why reconcile.yaml may override any entry.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "veo-3.1-generate-preview": {"720p": 0.40, "1080p": 0.40, "4k": 0.60},
    "veo-3.1-fast-generate-preview": {"720p": 0.10, "1080p": 0.12, "4k": 0.30},
}

# A generated file's id, in any of its URI forms (with or without /upload/, on any host).
FILE_ID_RE = re.compile(r"/files/([^/:?#]+)")


def frame_size(resolution: str, aspect_ratio: str = DEFAULT_ASPECT_RATIO) -> tuple[int, int]:
    """Width and height of a video of this resolution and aspect ratio."""
    width, height = RESOLUTIONS[resolution]
    return (height, width) if aspect_ratio == "9:16" else (width, height)


def video_identity(uri: str) -> str:
    """A provider video is its file id: the /upload/ and host variants of one URI are one video."""
    match = FILE_ID_RE.search(uri)
    return match.group(1) if match else uri
