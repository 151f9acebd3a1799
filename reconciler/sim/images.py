"""What the live API refuses in the images of a submission: first and last frame, reference images.

Images travel inline, as ``{"bytesBase64Encoded", "mimeType"}`` objects (the ``inlineData`` form
some of Google's samples show is refused), in three places: ``instances[0].image`` (the first
frame), ``instances[0].lastFrame`` and each item of ``instances[0].referenceImages``. Their
shapes are checked here, apart from the rest of the request (rules.py), because reference images
are a small grammar of their own: 1 to 3 items, each an image and a ``referenceType``. Like the
rest of the rules these are pure functions of the request body that return the 400 message, or
None; only the limits come from ``reconciler.facts``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

from reconciler.facts import IMAGE_MIME_TYPES, MAX_REFERENCE_IMAGES, REFERENCE_TYPES

_REFERENCE_KEYS = {"image", "referenceType"}


def check_image(image: Any, key: str = "image") -> str | None:
    """The 400 message for an image that is not inline base64 PNG or JPEG data, else None."""
    if isinstance(image, dict) and "inlineData" in image:
        return "inlineData isn't supported by this model. Use bytesBase64Encoded and mimeType."
    if not isinstance(image, dict) or set(image) != {"bytesBase64Encoded", "mimeType"}:
        return f"{key} must be an object with exactly bytesBase64Encoded and mimeType."
    if image["mimeType"] not in IMAGE_MIME_TYPES:
        return f"{key}.mimeType must be {either(IMAGE_MIME_TYPES)}, not {image['mimeType']!r}."
    data = image["bytesBase64Encoded"]
    try:
        decoded = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        return f"{key}.bytesBase64Encoded must be non-empty base64 data."
    return None


def check_reference_images(refs: Any, *, styles: bool) -> str | None:
    """The 400 message for a ``referenceImages`` value that is not 1 to 3 well-formed items.

    ``styles=False`` refuses ``referenceType: style`` the way the Gemini API does (only Vertex
    serves style references).
    """
    if not isinstance(refs, list):
        return "referenceImages must be a list."
    if not 1 <= len(refs) <= MAX_REFERENCE_IMAGES:
        return f"referenceImages must hold 1 to {MAX_REFERENCE_IMAGES} images, not {len(refs)}."
    for i, ref in enumerate(refs):
        key = f"referenceImages[{i}]"
        if not isinstance(ref, dict) or set(ref) != _REFERENCE_KEYS:
            return f"{key} must be an object with exactly image and referenceType."
        kind = ref["referenceType"]
        if kind not in REFERENCE_TYPES:
            return f"{key}.referenceType must be {either(REFERENCE_TYPES)}, not {kind!r}."
        if kind == "style" and not styles:
            return f"{key}.referenceType style is not supported in Gemini API; use asset."
        err = check_image(ref["image"], f"{key}.image")
        if err:
            return err
    return None


def either(values: Iterable[object]) -> str:
    """``a, b or c``: the allowed values as the messages list them."""
    *rest, last = map(str, values)
    return f"{', '.join(rest)} or {last}" if rest else last
