"""YAML reading that keeps line numbers, and pydantic errors turned into readable problems.

Specs and reconcile.yaml are parsed once, with the C loader when PyYAML has it, into plain data plus
the line of each document and of each top-level key: that is all an error message needs to point a
user at the right line, and it keeps pydantic models free of YAML concerns.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import Problem

try:  # the C loader is several times faster on large spec trees
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


@dataclass(frozen=True)
class Document:
    """One YAML document: its data, the line it starts on, and the line of each top-level key."""

    data: Any
    line: int
    key_lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, key: object) -> int:
        return self.key_lines.get(str(key), self.line)


def load_documents(path: Path, rel: str) -> tuple[list[Document], list[Problem]]:
    """Parse every document of a file; problems (bad UTF-8, bad YAML) instead of exceptions."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [], [Problem(rel, f"cannot be read: {exc.strerror}")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [
            Problem(rel, f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})")
        ]
    docs: list[Document] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            line = node.start_mark.line + 1
            key_lines: dict[str, int] = {}
            if isinstance(node, yaml.MappingNode):
                for key_node, _ in node.value:
                    key_lines.setdefault(str(key_node.value), key_node.start_mark.line + 1)
            data = loader.construct_document(node)
            if data is not None:
                docs.append(Document(data, line, key_lines))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = exc.problem or exc.context or "invalid YAML"
        return [], [Problem(rel, f"invalid YAML: {what}", line=line)]
    except yaml.YAMLError as exc:
        return [], [Problem(rel, f"invalid YAML: {exc}")]
    finally:
        loader.dispose()
    return docs, []


def pydantic_problems(
    exc: ValidationError, rel: str, doc: Document, *, known: tuple[str, ...] = ()
) -> list[Problem]:
    """One Problem per pydantic error, with the field path, the YAML line and what is allowed."""
    problems = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        field_name = ".".join(loc) or None
        line = doc.line_of(loc[0]) if loc else doc.line
        problems.append(Problem(rel, _message(err, loc, known), line=line, field=field_name))
    return problems


def _message(err: Any, loc: list[str], known: tuple[str, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        guess = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6) if known else []
        hint = (
            f"; did you mean '{guess[0]}'?"
            if guess
            else (f"; allowed keys: {', '.join(known)}" if known else "")
        )
        return f"unknown key{hint}"
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{err['input']!r} is not allowed; use one of {expected}"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg[:1].lower() + msg[1:] if msg else kind
