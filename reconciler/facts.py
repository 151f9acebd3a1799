"""The API's facts, in one place: model ids, resolutions, durations, frame sizes, list prices.

What Veo 3.1 accepts and produces (see shared/veo-api.md) is read by the spec models, the
simulator and ``verify`` from here, so a new model or resolution is one edit. The simulator keeps
its own validation *rules* (it must catch the client getting the API wrong), but not its own copy of
these numbers. Nothing here does I/O or imports another module of the package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

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

# Features a model may have, named for the request fields they allow (veo-api.md).
FEATURES = ("image", "lastFrame", "referenceImages", "video")

# The same values as types, for the pydantic models of specs and reconcile.yaml; spelled out
# because a type checker reads a Literal only from literals. The asserts tie them to the tuples,
# order included: pydantic's "use one of …" lists them in this order.
AspectRatio = Literal["16:9", "9:16"]
Resolution = Literal["720p", "1080p", "4k"]
Duration = Literal[4, 6, 8]
PersonGeneration = Literal["allow_all", "allow_adult"]
Feature = Literal["image", "lastFrame", "referenceImages", "video"]
ReferenceType = Literal["asset", "style"]
assert get_args(AspectRatio) == ASPECT_RATIOS and get_args(Resolution) == tuple(RESOLUTIONS)
assert get_args(Duration) == DURATIONS and get_args(PersonGeneration) == PERSON_GENERATION
assert get_args(Feature) == FEATURES


@dataclass(frozen=True)
class ModelFacts:
    """What one model id accepts and costs: list prices (USD per second of video, per
    resolution), resolutions, durations, and features."""

    price: dict[str, float]
    resolutions: tuple[str, ...] = tuple(RESOLUTIONS)
    durations: tuple[int, ...] = DURATIONS
    features: frozenset[str] = frozenset(FEATURES)


# The built-in model catalog. Google's own API retired the preview ids on 2026-10-22; resellers
# keep or remap ids on their own schedule, so reconcile.yaml's `models:` may add or override any
# entry: model ids are data, not code.
_STANDARD = {"720p": 0.40, "1080p": 0.40, "4k": 0.60}
_FAST = {"720p": 0.10, "1080p": 0.12, "4k": 0.30}
CATALOG: dict[str, ModelFacts] = {
    "veo-3.1-generate-preview": ModelFacts(_STANDARD),
    "veo-3.1-fast-generate-preview": ModelFacts(_FAST),
    "veo-3.1-generate-001": ModelFacts(_STANDARD),
    "veo-3.1-fast-generate-001": ModelFacts(_FAST),
    "veo-3.1-lite-generate-001": ModelFacts(
        {"720p": 0.05, "1080p": 0.08},
        resolutions=("720p", "1080p"),
        features=frozenset({"image", "lastFrame", "video"}),
    ),
}
# The two ids the first releases knew (and the simulator serves by default).
MODELS = ("veo-3.1-generate-preview", "veo-3.1-fast-generate-preview")


# Video-to-video (extension): 720p, 8 s (or unset); the result is the source plus about 7 s,
# from a source of at most 141 s, at most 20 extensions deep (148 s in all).
EXTENSION_RESOLUTION = "720p"
EXTENSION_SECONDS = 7.0
MAX_EXTENDED_SECONDS = 148.0
MAX_SOURCE_SECONDS = 141.0
MAX_EXTENSIONS = 20

# Durations that must be 8 s: extensions, reference images, 1080p and 4k.
EIGHT_SECONDS = 8

# Reference images: 1 to 3, each an "asset" (Gemini API) or a "style" (Vertex only).
MAX_REFERENCE_IMAGES = 3
REFERENCE_TYPES = ("asset", "style")
assert get_args(ReferenceType) == REFERENCE_TYPES
SEED_MAX = 2**32 - 1

# personGeneration allowed per mode (Google's docs, late 2026): image-to-video, first/last frame
# and reference images take allow_adult only. Text-to-video and extension take allow_all, and in
# the EU, UK, CH and MENA allow_adult only: both are accepted there, the region decides.
PERSON_GENERATION_BY_MODE = {
    "text": ("allow_all", "allow_adult"),
    "video": ("allow_all", "allow_adult"),
    "image": ("allow_adult",),
    "referenceImages": ("allow_adult",),
}

# The provider keeps a generated file about 2 days after it finished (or was last used as a source).
REMOTE_FILE_SECONDS = 2 * 24 * 3600

IMAGE_MIME_TYPES = ("image/png", "image/jpeg")
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # the API's inline request limit
MAX_PROMPT_CHARS = 4096  # about 1,024 tokens, the documented prompt limit

# USD per second of generated video (Gemini API list prices, 2026-09; see veo-api.md).
# Resellers charge differently, which is why reconcile.yaml may override any entry.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    model: dict(facts.price) for model, facts in CATALOG.items()
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
