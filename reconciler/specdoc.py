"""The pydantic model of one spec document: what a valid spec is, and every error message.

Imported only when a document is not of the plain shape ``spec.plain_doc`` proves valid by
itself (or to report why it is not): a cold load of valid specs never pays for pydantic.
"""

from __future__ import annotations

import re
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .facts import (
    DEFAULT_ASPECT_RATIO,
    DEFAULT_RESOLUTION,
    MAX_PROMPT_CHARS,
    MAX_REFERENCE_IMAGES,
    SEED_MAX,
    AspectRatio,
    Duration,
    PersonGeneration,
    ReferenceType,
    Resolution,
)
from .spec import MAX_NAME_CHARS, NAME_RE
from .yamlio import show

__all__ = ["ReferenceDoc", "SpecDoc", "ValidationError", "VideoRef", "slugify"]


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
        if self.from_ is not None and not NAME_RE.match(self.from_):
            raise ValueError(f"'from' must name another spec, not {show(self.from_)}")
        if self.uri is not None and not self.uri.startswith(("https://", "http://")):
            raise ValueError("'uri' must be an http(s) URI of a video the provider generated")
        return self


class ReferenceDoc(BaseModel):
    """One reference image in its long form: ``{image: PATH, referenceType: asset|style}``."""

    model_config = ConfigDict(extra="forbid")

    image: str
    referenceType: ReferenceType = "asset"


class SpecDoc(BaseModel):
    """One spec document as written. Keys are the API's own parameter names."""

    model_config = ConfigDict(extra="forbid")

    name: str
    # Any id: models are data (the built-in catalog and reconcile.yaml's `models:`), checked by
    # the loader against the catalog in force.
    model: str
    prompt: str
    # mypy sees the facts' defaults as plain str; the asserts above make these casts true.
    aspectRatio: AspectRatio = cast(AspectRatio, DEFAULT_ASPECT_RATIO)
    resolution: Resolution = cast(Resolution, DEFAULT_RESOLUTION)
    durationSeconds: Duration | None = None
    personGeneration: PersonGeneration | None = None
    enhancePrompt: bool = True
    negativePrompt: str | None = None
    image: str | None = None
    lastFrame: str | None = None
    referenceImages: list[str | ReferenceDoc] | None = Field(
        default=None, min_length=1, max_length=MAX_REFERENCE_IMAGES
    )
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX, strict=True)
    video: VideoRef | None = None
    # Pin an earlier take (its sha256, or a prefix of at least 8 hex digits, as `reconcile takes`
    # lists them): the name shows those bytes, for free, whatever the rest of the spec asks.
    take: str | None = Field(default=None, pattern=r"^[0-9a-f]{8,64}$")

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

    @field_validator("image", "lastFrame")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is None:  # `image: ~`, or the key with nothing after it: YAML's null, not set
            return None
        if not value.strip():
            raise ValueError("must not be empty: give the image's path relative to this spec file")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty: give a model id, such as veo-3.1-generate-001")
        return value.strip()

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
