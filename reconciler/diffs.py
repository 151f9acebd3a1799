"""What changed in a spec, as a reviewer reads it: field by field, old → new.

A replace costs money, so the plan says why in the spec's own terms: which fields changed, a word
diff of the prompt that fits a terminal line, "image bytes changed" with both hashes for an image
replaced under the same name. Pure: two ``Desired.describe()`` dicts in, lines out.
"""

from __future__ import annotations

from typing import Any

CONTEXT_WORDS = 4  # unchanged words kept on each side of a prompt change; the rest is "…"


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per field that differs, in a stable order, e.g. ``resolution: 720p → 1080p``."""
    lines = []
    for field in sorted(set(old) | set(new), key=_order):
        a, b = old.get(field), new.get(field)
        if a == b:
            continue
        if field == "prompt" and isinstance(a, str) and isinstance(b, str):
            lines.append(f"prompt: {prompt_diff(a, b)}")
        elif field in ("image", "lastFrame"):
            lines.append(f"{field}: {_image_change(a, b)}")
        elif field == "referenceImages":
            lines.append(f"referenceImages: {_references_change(a or [], b or [])}")
        elif field == "video" and isinstance(b, dict) and _same_source(a, b):
            lines.append(f"video: its source `{b['from']}` changed")
        else:
            lines.append(f"{field}: {_show(a)} → {_show(b)}")
    return lines


def prompt_diff(old: str, new: str) -> str:
    """A word diff: removed words in ``[-…-]``, added ones in ``{+…+}``, long unchanged runs cut."""
    import difflib  # here: only a replaced prompt needs it (1.3 ms of every plan's imports)

    a, b = old.split(), new.split()
    parts: list[str] = []
    opcodes = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    for index, (op, i1, i2, j1, j2) in enumerate(opcodes):
        if op == "equal":
            words = a[i1:i2]
            head = words[:CONTEXT_WORDS] if index > 0 else []
            tail = words[-CONTEXT_WORDS:] if index < len(opcodes) - 1 else []
            if len(words) > len(head) + len(tail):
                parts.extend([*head, "…", *tail])
            else:
                parts.extend(words)
            continue
        if i2 > i1:
            parts.append("[-" + " ".join(a[i1:i2]) + "-]")
        if j2 > j1:
            parts.append("{+" + " ".join(b[j1:j2]) + "+}")
    return " ".join(parts)


def _image_change(a: Any, b: Any) -> str:
    if a is None:
        return f"added {b['path']} ({b['sha256'][:16]})"
    if b is None:
        return f"removed {a['path']}"
    if a["sha256"] != b["sha256"]:
        moved = "" if a["path"] == b["path"] else f", now {b['path']}"
        return f"image bytes changed ({a['sha256'][:16]} → {b['sha256'][:16]}{moved})"
    return f"{a['path']} → {b['path']}"


def _references_change(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    if len(a) != len(b):
        return f"{len(a)} → {len(b)} images"
    changed = [i + 1 for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    return "image " + ", ".join(str(i) for i in changed) + " changed"


def _same_source(a: Any, b: Any) -> bool:
    return (
        isinstance(a, dict) and isinstance(b, dict) and a.get("from") == b.get("from") is not None
    )


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_FIRST = ("model", "prompt", "resolution", "durationSeconds", "aspectRatio")


def _order(field: str) -> tuple[int, str]:
    return (_FIRST.index(field) if field in _FIRST else len(_FIRST), field)
