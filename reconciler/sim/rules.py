"""What the live API refuses with a 400, and what an accepted submission will produce.

The simulator exists to catch the client getting the API wrong, so it keeps its own rules and its
own messages (close to the live API's, word for word where one is known) instead of trusting the
client's validation; only the facts (models, resolutions, durations…) come from
``reconciler.facts``. Everything here is a pure function of the request body: no HTTP, no locks.
A video-to-video request needs to know about its source file, so the caller passes a lookup in.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.facts import (
    ASPECT_RATIOS,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_DURATION,
    DEFAULT_RESOLUTION,
    DURATIONS,
    EXTENSION_RESOLUTION,
    EXTENSION_SECONDS,
    IMAGE_MIME_TYPES,
    MAX_EXTENDED_SECONDS,
    PERSON_GENERATION,
    RESOLUTIONS,
    RESOLUTIONS_NEEDING_8S,
    frame_size,
)

# Every parameter name the API knows: a snake_case or misspelt name must not pass silently.
_PARAMETERS = {
    "aspectRatio",
    "resolution",
    "durationSeconds",
    "personGeneration",
    "enhancePrompt",
    "negativePrompt",
    "seed",
    "numberOfVideos",
}
_INSTANCE_KEYS = ("prompt", "image", "video", "lastFrame", "referenceImages")
# With foreign_sources, a source this simulator never made is taken as a clip of the default length.
_FOREIGN_SOURCE_S = float(DEFAULT_DURATION)


@dataclass
class Plan:
    """What an accepted submission will produce."""

    width: int
    height: int
    duration_s: float
    source_file: str | None = None


class Source(Protocol):
    """The video behind a file a video-to-video request names."""

    duration_s: float
    width: int
    height: int


# A file id to the live video behind it, or None when this service has no such file (any more).
SourceLookup = Callable[[str], Source | None]


def prompt_of(body: Any) -> str | None:
    """The prompt of a submission, however malformed the rest of it is (faults match on it)."""
    try:
        prompt = body["instances"][0]["prompt"]
    except (KeyError, IndexError, TypeError):
        return None
    return prompt if isinstance(prompt, str) else None


def plan_submission(body: Any, *, source: SourceLookup, foreign_sources: bool) -> Plan | str:
    """The plan for a submission, or the message of the 400 the live API would give."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    unknown = set(body) - {"instances", "parameters"}
    if unknown:
        name = sorted(unknown)[0]
        return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    instances = body.get("instances")
    if not isinstance(instances, list) or len(instances) != 1 or not isinstance(instances[0], dict):
        return "instances must be a list holding exactly one instance object."
    inst = instances[0]
    for key in inst:
        if key not in _INSTANCE_KEYS:
            return f"Invalid JSON payload received. Unknown name \"{key}\" at 'instances[0]'."
    prompt = inst.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "instances[0].prompt is required and must be a non-empty string."
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        return "parameters must be an object."
    for key in params:
        if key not in _PARAMETERS:
            return f"Unknown parameter {key!r} (parameter names are camelCase, e.g. aspectRatio)."
    image, video = inst.get("image"), inst.get("video")
    if image is not None and video is not None:
        return "image and video cannot be used together: give one of them, or neither."
    for key in ("image", "lastFrame"):
        err = check_image(inst[key], key) if inst.get(key) is not None else None
        if err:
            return err
    if not isinstance(inst.get("referenceImages", []), list):
        return "referenceImages must be a list."
    err = _check_parameters(params)
    if err:
        return err
    aspect = params.get("aspectRatio", DEFAULT_ASPECT_RATIO)
    resolution = params.get("resolution", DEFAULT_RESOLUTION)
    duration = params.get("durationSeconds")
    if video is None:
        width, height = frame_size(resolution, aspect)
        return Plan(width, height, float(duration or DEFAULT_DURATION))
    return _plan_extension(
        video, params, resolution, duration, source=source, foreign_sources=foreign_sources
    )


def _check_parameters(params: dict[str, Any]) -> str | None:
    aspect = params.get("aspectRatio", DEFAULT_ASPECT_RATIO)
    if aspect not in ASPECT_RATIOS:
        return f"aspectRatio must be {_either(ASPECT_RATIOS)}, not {aspect!r}."
    resolution = params.get("resolution", DEFAULT_RESOLUTION)
    if resolution not in RESOLUTIONS:
        return f"resolution must be one of {', '.join(RESOLUTIONS)}, not {resolution!r}."
    duration = params.get("durationSeconds")
    if duration is not None:
        # The live API refused the string "8" with exactly this message (veo-api.md).
        if isinstance(duration, bool) or not isinstance(duration, int | float):
            return "The value type for durationSeconds needs to be a number."
        if duration not in DURATIONS:
            return f"durationSeconds must be {_either(DURATIONS)}, not {duration}."
    if resolution in RESOLUTIONS_NEEDING_8S and duration not in (None, 8):
        return f"resolution {resolution} is only supported with durationSeconds 8."
    if "personGeneration" in params and params["personGeneration"] not in PERSON_GENERATION:
        return f"personGeneration must be {_either(PERSON_GENERATION)}."
    if not isinstance(params.get("enhancePrompt", True), bool):
        return "enhancePrompt must be a boolean."
    if not isinstance(params.get("negativePrompt", ""), str):
        return "negativePrompt must be a string."
    if params.get("numberOfVideos", 1) != 1:
        return "numberOfVideos must be 1 for this model."
    return None


def _plan_extension(
    video: Any,
    params: dict[str, Any],
    resolution: str,
    duration: Any,
    *,
    source: SourceLookup,
    foreign_sources: bool,
) -> Plan | str:
    if not isinstance(video, dict) or not isinstance(video.get("uri"), str) or set(video) - {"uri"}:
        return "video must be an object holding only uri, the download URI of a generated video."
    if resolution != EXTENSION_RESOLUTION:
        return f"Video extension only supports resolution {EXTENSION_RESOLUTION}."
    if duration not in (None, 8):
        return "Video extension only supports durationSeconds 8."
    m = re.search(r"/files/([^/:?]+):download", video["uri"])
    found = source(m.group(1)) if m else None
    if found is None and foreign_sources:
        aspect = params.get("aspectRatio", DEFAULT_ASPECT_RATIO)
        width, height = frame_size(EXTENSION_RESOLUTION, aspect)
        return Plan(width, height, _FOREIGN_SOURCE_S + EXTENSION_SECONDS)
    if m is None or found is None:
        return (
            f"video.uri {video['uri']!r} does not name a video generated by this service in "
            "the last 2 days."
        )
    total = found.duration_s + EXTENSION_SECONDS
    if total > MAX_EXTENDED_SECONDS:
        return f"The video cannot be extended beyond {MAX_EXTENDED_SECONDS:g} seconds."
    # Without an aspectRatio the result keeps the source's orientation.
    aspect = params.get("aspectRatio", "9:16" if found.height > found.width else "16:9")
    width, height = frame_size(EXTENSION_RESOLUTION, aspect)
    return Plan(width, height, total, source_file=m.group(1))


def check_image(image: Any, key: str = "image") -> str | None:
    """The 400 message for an image that is not inline base64 PNG or JPEG data, else None."""
    if isinstance(image, dict) and "inlineData" in image:
        return "inlineData isn't supported by this model. Use bytesBase64Encoded and mimeType."
    if not isinstance(image, dict) or set(image) != {"bytesBase64Encoded", "mimeType"}:
        return f"{key} must be an object with exactly bytesBase64Encoded and mimeType."
    if image["mimeType"] not in IMAGE_MIME_TYPES:
        return f"{key}.mimeType must be {_either(IMAGE_MIME_TYPES)}, not {image['mimeType']!r}."
    data = image["bytesBase64Encoded"]
    try:
        decoded = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        return f"{key}.bytesBase64Encoded must be non-empty base64 data."
    return None


def _either(values: Iterable[object]) -> str:
    """``a, b or c``: the allowed values as the messages list them."""
    *rest, last = map(str, values)
    return f"{', '.join(rest)} or {last}" if rest else last
