"""Specs: the pydantic model of one video, the normalized spec the planner works on, and its key.

The spec key is what makes "never pay twice" checkable: sha256 over a canonical form of everything
that decides the generated video (model, prompt, normalized parameters, image bytes and type, the
source video's identity) and nothing else (name, file, key order, comments, output folder). Two specs
with the same key are the same paid generation.

Nothing here walks folders or reads spec files: that is ``loader``, which builds ``Desired`` from
the models here. Only ``Desired.request_body`` reads a file, the image, to send it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import Problem, SpecErrors
from .facts import (
    ASPECT_RATIOS,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_DURATION,
    DEFAULT_RESOLUTION,
    DURATIONS,
    EXTENSION_RESOLUTION,
    MAX_PROMPT_CHARS,
    MODELS,
    PERSON_GENERATION,
    RESOLUTIONS,
    RESOLUTIONS_NEEDING_8S,
    video_identity,
)
from .yamlio import show

KEY_VERSION = 1
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
MAX_NAME_CHARS = 64

# The API's allowed values, spelled out because mypy reads a Literal only from literals. The asserts
# tie each to its tuple in facts, order included: pydantic's "use one of …" lists them in this order.
ModelName = Literal["veo-3.1-generate-preview", "veo-3.1-fast-generate-preview"]
AspectRatio = Literal["16:9", "9:16"]
Resolution = Literal["720p", "1080p", "4k"]
Duration = Literal[4, 6, 8]
PersonGeneration = Literal["allow_all", "allow_adult"]
assert get_args(ModelName) == MODELS
assert get_args(AspectRatio) == ASPECT_RATIOS
assert get_args(Resolution) == tuple(RESOLUTIONS)
assert get_args(Duration) == DURATIONS
assert get_args(PersonGeneration) == PERSON_GENERATION
assert DEFAULT_ASPECT_RATIO in ASPECT_RATIOS and DEFAULT_RESOLUTION in RESOLUTIONS
assert DEFAULT_DURATION in DURATIONS


class VideoRef(BaseModel):
    """The source of a video-to-video extension: a provider URI, or another spec's output."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    uri: str | None = None
    from_: str | None = Field(default=None, alias="from")

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping such as {{uri: https://…}}, not {show(value)}")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> VideoRef:
        if (self.uri is None) == (self.from_ is None):
            raise ValueError("give exactly one of 'uri' or 'from'")
        if self.from_ is not None:
            raise ValueError(
                "'from' (chaining onto another spec's output) is not supported yet; "
                "use 'uri' with the provider's video URI"
            )
        if self.uri is not None and not self.uri.startswith(("https://", "http://")):
            raise ValueError("'uri' must be an http(s) URI of a video the provider generated")
        return self


class SpecDoc(BaseModel):
    """One spec document as written. Keys are the API's own parameter names."""

    model_config = ConfigDict(extra="forbid")

    name: str
    model: ModelName
    prompt: str
    # mypy sees the facts' defaults as plain str; the asserts above make these casts true.
    aspectRatio: AspectRatio = cast(AspectRatio, DEFAULT_ASPECT_RATIO)
    resolution: Resolution = cast(Resolution, DEFAULT_RESOLUTION)
    durationSeconds: Duration | None = None
    personGeneration: PersonGeneration | None = None
    enhancePrompt: bool = True
    negativePrompt: str | None = None
    image: str | None = None
    video: VideoRef | None = None

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if NAME_RE.match(value):
            return value
        if len(value) > MAX_NAME_CHARS:
            raise ValueError(
                f"is {len(value)} characters long; a name has at most {MAX_NAME_CHARS}"
            )
        guess = slugify(value)
        raise ValueError(
            f"{value!r} is not a slug: use 1-{MAX_NAME_CHARS} lowercase letters, digits, '-' or '_', "
            "starting and ending with a letter or digit"
            + (f" (such as {guess!r})" if guess else "")
        )

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"{len(value)} characters is longer than the API accepts "
                f"(about 1,024 tokens; keep it under {MAX_PROMPT_CHARS} characters)"
            )
        return value

    @field_validator("image")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty: give the image's path relative to this spec file")
        return value

    @field_validator("durationSeconds", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        # GPTProto's docs show it as a string; accept "8" in specs, always send a number.
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


def slugify(value: str) -> str:
    """The nearest valid name, offered in the error message; "" when there is none."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", value.lower()).strip("-_")[:MAX_NAME_CHARS].strip("-_")
    return slug if NAME_RE.match(slug) else ""


def rule_problems(spec: SpecDoc) -> list[tuple[str, str]]:
    """Rules across fields, as (field, message): the API's table that no single field shows."""
    found = []
    if spec.image is not None and spec.video is not None:
        found.append(("video", "'image' and 'video' cannot be used together: pick one mode"))
    if spec.video is not None:
        if spec.resolution != EXTENSION_RESOLUTION:
            message = f"video-to-video (extension) only supports {EXTENSION_RESOLUTION}"
            found.append(("resolution", message))
        if spec.durationSeconds not in (None, 8):
            found.append(("durationSeconds", "video-to-video (extension) needs 8 (or unset)"))
    if spec.resolution in RESOLUTIONS_NEEDING_8S and spec.durationSeconds not in (None, 8):
        found.append(
            (
                "durationSeconds",
                f"resolution {spec.resolution} needs 8 seconds (got {spec.durationSeconds}); "
                "use 720p for 4 or 6 seconds",
            )
        )
    return found


SPEC_FIELDS = tuple(SpecDoc.model_fields)
FORBIDDEN_DEFAULTS = ("name", "image", "video")
KNOWN_KEYS = {"": SPEC_FIELDS, "video": ("uri", "from")}


@dataclass(frozen=True)
class ImageInput:
    """A first-frame image, identified by its bytes: moving or renaming it changes nothing."""

    path: str  # relative to the repo root
    sha256: str
    mime_type: str
    size: int


@dataclass(frozen=True)
class Desired:
    """One validated spec, normalized, with its key: the planner's unit of desired state."""

    name: str
    file: str
    line: int
    model: str
    prompt: str
    parameters: dict[str, Any]
    image: ImageInput | None = None
    video_uri: str | None = None
    key: str = field(default="")

    @property
    def duration(self) -> int:
        """Seconds of video paid for: always set, the loader fills in the default."""
        return int(self.parameters["durationSeconds"])

    @property
    def resolution(self) -> str:
        """The resolution paid for and checked by verify: always set, defaults filled in."""
        return str(self.parameters["resolution"])

    def canonical(self) -> dict[str, Any]:
        """The key's input: only what decides the video, defaults filled in."""
        return {
            "v": KEY_VERSION,
            "model": self.model,
            "prompt": self.prompt,
            "parameters": {k: self.parameters.get(k) for k in sorted(_KEY_PARAMETERS)},
            "image": None
            if self.image is None
            else {"sha256": self.image.sha256, "mimeType": self.image.mime_type},
            "video": None if self.video_uri is None else {"file": video_identity(self.video_uri)},
        }

    def request_body(self, repo: Path) -> dict[str, Any]:
        """The submit body; re-reads the image and refuses it if it changed since the key was made."""
        instance: dict[str, Any] = {"prompt": self.prompt}
        if self.image is not None:
            try:
                data = (repo / self.image.path).read_bytes()
            except OSError as exc:
                message = f"{self.image.path} can no longer be read ({exc.strerror}); run again"
                raise SpecErrors([Problem(self.file, message, field="image")]) from None
            if hashlib.sha256(data).hexdigest() != self.image.sha256:
                raise SpecErrors(
                    [Problem(self.file, "changed while running; run again", field="image")]
                )
            instance["image"] = {
                "bytesBase64Encoded": base64.b64encode(data).decode("ascii"),
                "mimeType": self.image.mime_type,
            }
        if self.video_uri is not None:
            instance["video"] = {"uri": self.video_uri}
        params = {k: v for k, v in self.parameters.items() if v is not None}
        return {"instances": [instance], "parameters": params}


_KEY_PARAMETERS = (
    "aspectRatio",
    "resolution",
    "durationSeconds",
    "personGeneration",
    "enhancePrompt",
    "negativePrompt",
)


def spec_key(desired: Desired) -> str:
    """sha256 of the canonical form as compact JSON with sorted keys: one spelling per video."""
    blob = json.dumps(
        desired.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
