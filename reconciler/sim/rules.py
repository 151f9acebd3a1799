"""What the live API refuses with a 400, and what an accepted submission will produce.

The simulator exists to catch the client getting the API wrong, so it keeps its own rules and its
own messages (close to the live API's, word for word where one is known) instead of trusting the
client's validation; only the facts (models, resolutions, durations, limits…) come from
``reconciler.facts``. Everything here is a pure function of the request body and the facts of the
model it was sent to: no HTTP, no locks. A video-to-video request needs to know about its source
file, so the caller passes a lookup in. The images a request carries are checked in images.py.

A request is in one of four modes, named as ``facts.PERSON_GENERATION_BY_MODE`` names them:
``video`` (extension), ``referenceImages``, ``image`` (first frame, or first and last frame) and
``text``; the mode decides which ``personGeneration`` and which durations it may ask for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.facts import (
    ASPECT_RATIOS,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_DURATION,
    DEFAULT_RESOLUTION,
    DURATIONS,
    EIGHT_SECONDS,
    EXTENSION_RESOLUTION,
    EXTENSION_SECONDS,
    FEATURES,
    MAX_EXTENDED_SECONDS,
    MAX_EXTENSIONS,
    MAX_SOURCE_SECONDS,
    PERSON_GENERATION,
    PERSON_GENERATION_BY_MODE,
    RESOLUTIONS,
    RESOLUTIONS_NEEDING_8S,
    SEED_MAX,
    ModelFacts,
    frame_size,
)

from .images import check_image, check_reference_images, either

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
# The frame sizes an extension's source may have: 720p, either way up.
_EXTENSION_FRAMES = {frame_size(EXTENSION_RESOLUTION, aspect) for aspect in ASPECT_RATIOS}
_MODE_NAMES = {
    "text": "Text-to-video",
    "video": "Video extension",
    "image": "Image-to-video (first frame, or first and last frame)",
    "referenceImages": "Video from reference images",
}


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


def mode_of(instance: dict[str, Any]) -> str:
    """The mode of a (valid) instance: video, referenceImages, image or text."""
    for key in ("video", "referenceImages", "image"):
        if instance.get(key) is not None:
            return key
    return "text"


def plan_submission(
    body: Any,
    *,
    model: str,
    facts: ModelFacts,
    source: SourceLookup,
    foreign_sources: bool,
    reference_styles: bool = True,
) -> Plan | str:
    """The plan for a submission to ``model``, or the message of the 400 the live API would give.

    ``reference_styles=False`` refuses ``referenceType: style`` as the Gemini API does.
    """
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
    err = _check_inputs(inst, reference_styles=reference_styles)
    err = err or _check_parameters(params) or _check_model(inst, params, model, facts)
    if err:
        return err
    mode = mode_of(inst)
    err = _check_person_generation(params, mode)
    if err:
        return err
    aspect = params.get("aspectRatio", DEFAULT_ASPECT_RATIO)
    resolution = params.get("resolution", DEFAULT_RESOLUTION)
    duration = params.get("durationSeconds")
    if mode == "referenceImages" and duration not in (None, EIGHT_SECONDS):
        return f"referenceImages are only supported with durationSeconds {EIGHT_SECONDS}."
    if mode != "video":
        width, height = frame_size(resolution, aspect)
        return Plan(width, height, float(duration or DEFAULT_DURATION))
    return _plan_extension(
        inst["video"], params, resolution, duration, source=source, foreign_sources=foreign_sources
    )


def _check_inputs(inst: dict[str, Any], *, reference_styles: bool) -> str | None:
    """What the instance gives besides its prompt: images, reference images, a video."""
    image, video, refs = inst.get("image"), inst.get("video"), inst.get("referenceImages")
    if image is not None and video is not None:
        return "image and video cannot be used together: give one of them, or neither."
    for key in ("image", "lastFrame"):
        err = check_image(inst[key], key) if inst.get(key) is not None else None
        if err:
            return err
    if inst.get("lastFrame") is not None and image is None:
        return "lastFrame needs image: give the first frame as image and the last as lastFrame."
    if refs is not None:
        err = check_reference_images(refs, styles=reference_styles)
        if err:
            return err
        if video is not None:
            return "referenceImages and video cannot be used together: give one of them."
    return None


def _check_parameters(params: dict[str, Any]) -> str | None:
    aspect = params.get("aspectRatio", DEFAULT_ASPECT_RATIO)
    if aspect not in ASPECT_RATIOS:
        return f"aspectRatio must be {either(ASPECT_RATIOS)}, not {aspect!r}."
    resolution = params.get("resolution", DEFAULT_RESOLUTION)
    if resolution not in RESOLUTIONS:
        return f"resolution must be one of {', '.join(RESOLUTIONS)}, not {resolution!r}."
    duration = params.get("durationSeconds")
    if duration is not None:
        # The live API refused the string "8" with exactly this message (veo-api.md).
        if isinstance(duration, bool) or not isinstance(duration, int | float):
            return "The value type for durationSeconds needs to be a number."
        if duration not in DURATIONS:
            return f"durationSeconds must be {either(DURATIONS)}, not {duration}."
    if resolution in RESOLUTIONS_NEEDING_8S and duration not in (None, EIGHT_SECONDS):
        return f"resolution {resolution} is only supported with durationSeconds {EIGHT_SECONDS}."
    if "personGeneration" in params and params["personGeneration"] not in PERSON_GENERATION:
        return f"personGeneration must be {either(PERSON_GENERATION)}."
    if "seed" in params and not _is_uint32(params["seed"]):
        return f"seed must be an integer from 0 to {SEED_MAX}, not {json.dumps(params['seed'])}."
    if not isinstance(params.get("enhancePrompt", True), bool):
        return "enhancePrompt must be a boolean."
    if not isinstance(params.get("negativePrompt", ""), str):
        return "negativePrompt must be a string."
    if params.get("numberOfVideos", 1) != 1:
        return "numberOfVideos must be 1 for this model."
    return None


def _is_uint32(value: Any) -> bool:
    """A JSON number that is a whole number in 0..2^32-1 (42.0 is one; true and "42" are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not value.is_integer():
        return False  # also NaN and the infinities
    return 0 <= value <= SEED_MAX


def _check_model(
    inst: dict[str, Any], params: dict[str, Any], model: str, facts: ModelFacts
) -> str | None:
    """What this model lacks of what the request asks for (lite: no 4k, no reference images)."""
    for feature in FEATURES:
        if inst.get(feature) is not None and feature not in facts.features:
            # The live API's words for a field a model does not take, with the model named.
            return f"`{feature}` isn't supported by this model ({model})."
    resolution = params.get("resolution", DEFAULT_RESOLUTION)
    if resolution not in facts.resolutions:
        return (
            f"resolution {resolution} isn't supported by this model ({model}); "
            f"it offers {either(facts.resolutions)}."
        )
    duration = params.get("durationSeconds")
    if duration is not None and duration not in facts.durations:
        return (
            f"durationSeconds {duration:g} isn't supported by this model ({model}); "
            f"it offers {either(facts.durations)}."
        )
    return None


def _check_person_generation(params: dict[str, Any], mode: str) -> str | None:
    value = params.get("personGeneration")
    allowed = PERSON_GENERATION_BY_MODE[mode]
    if value is None or value in allowed:
        return None
    # The first sentence is the live API's, word for word (allow_adult on text-to-video).
    return (
        f"{value} for personGeneration is currently not supported. "
        f"{_MODE_NAMES[mode]} takes {either(allowed)}, or no personGeneration at all."
    )


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
    if duration not in (None, EIGHT_SECONDS):
        return f"Video extension only supports durationSeconds {EIGHT_SECONDS}."
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
    if (found.width, found.height) not in _EXTENSION_FRAMES:
        return (
            f"Video extension needs a {EXTENSION_RESOLUTION} source video; "
            f"this one is {found.width}x{found.height}."
        )
    # Each extension adds 7 s to a first clip of at least 4 s (the shortest duration), so this cap
    # on the source's length is also the cap on the depth: 20 extensions at most, 148 s in all.
    if found.duration_s > MAX_SOURCE_SECONDS:
        return (
            f"The input video is {found.duration_s:g} seconds long; video extension takes videos "
            f"of at most {MAX_SOURCE_SECONDS:g} seconds (at most {MAX_EXTENSIONS} extensions, "
            f"{MAX_EXTENDED_SECONDS:g} seconds in all)."
        )
    # Without an aspectRatio the result keeps the source's orientation.
    aspect = params.get("aspectRatio", "9:16" if found.height > found.width else "16:9")
    width, height = frame_size(EXTENSION_RESOLUTION, aspect)
    return Plan(width, height, found.duration_s + EXTENSION_SECONDS, source_file=m.group(1))
