"""YAML reading that keeps line numbers, and pydantic errors turned into readable problems.

Specs and reconcile.yaml are parsed once, with the C loader when PyYAML has it, into plain data plus
the line of each document and of each key: that is all an error message needs to point a
user at the right line, and it keeps pydantic models free of YAML concerns.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from . import flatyaml
from .errors import Problem

if TYPE_CHECKING:  # pydantic is imported only where a document needs it
    from pydantic import ValidationError

_Base: Any
try:  # the C loader is several times faster on large spec trees
    _Base = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Base = yaml.SafeLoader

# YAML 1.1 reads `16:9` as the base-60 integer 969 (and `4:3` as 243): a spec's unquoted aspect
# ratio would turn into a number nobody wrote. Numbers keep every other YAML 1.1 form; only the
# sexagesimal ones are dropped, so `aspectRatio: 16:9` stays the string "16:9".
_INT = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_REPLACED = {"tag:yaml.org,2002:int": _INT, "tag:yaml.org,2002:float": _FLOAT}


class _Loader(_Base):
    """The safe loader without base-60 numbers."""

    yaml_implicit_resolvers: ClassVar[dict[str | None, list[tuple[str, re.Pattern[str]]]]] = {
        first: [(tag, _REPLACED.get(tag, regexp)) for tag, regexp in resolvers]
        for first, resolvers in _Base.yaml_implicit_resolvers.items()
    }


@dataclass(frozen=True)
class Document:
    """One YAML document: its data, the line it starts on, and the line of each key.

    ``key_lines`` maps a dotted key path (``prompt``, ``limits.concurrency``) to its line. A
    document parsed from text keeps its node instead, and walks it for key lines only when a
    message asks for one: a valid spec never needs them.
    """

    data: Any
    line: int
    lines: dict[str, int] | None = None
    node: yaml.Node | None = field(default=None, compare=False, repr=False)

    @property
    def key_lines(self) -> dict[str, int]:
        if self.lines is None:
            found: dict[str, int] = {}
            if self.node is not None:
                _walk(self.node, "", found, "", set())
            object.__setattr__(self, "lines", found)
            object.__setattr__(self, "node", None)
        assert self.lines is not None
        return self.lines

    def line_of(self, key: object) -> int:
        return self.key_lines.get(str(key), self.line)

    def line_at(self, loc: Sequence[object]) -> int:
        """The line of the deepest key of ``loc`` that YAML gave a line for."""
        parts = [str(part) for part in loc]
        for end in range(len(parts), 0, -1):
            line = self.key_lines.get(".".join(parts[:end]))
            if line is not None:
                return line
        return self.line


def _read(path: Path | str) -> bytes:
    """A whole file through the os module: a buffered file object costs as much again as the
    system calls on a small spec (12 against 6 us here), and a cold load reads thousands."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, os.fstat(fd).st_size + 1)]
        while chunks[-1]:  # to the end, however the file changed since its stat
            chunks.append(os.read(fd, 1 << 20))
    finally:
        os.close(fd)
    return b"".join(chunks)


def _line_of_offset(text: str, offset: int) -> int:
    return text.count("\n", 0, max(offset, 0)) + 1


def load_documents(path: Path | str, rel: str) -> tuple[list[Document], list[Problem]]:
    """Parse every document of a file; problems (bad UTF-8, bad YAML) instead of exceptions."""
    try:
        raw = _read(path)
    except OSError as exc:
        return [], [Problem(rel, f"cannot be read: {exc.strerror}")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return [], [
            Problem(
                rel,
                f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                "save it as UTF-8",
                line=line,
            )
        ]
    flat = flatyaml.documents(text, _Loader)
    if flat is not None:  # the common shape, read without libyaml
        return [Document(data, line, lines) for data, line, lines in flat], []
    return _parse(text, rel)


def _parse(text: str, rel: str) -> tuple[list[Document], list[Problem]]:
    """Every document of ``text`` through PyYAML's loader: any shape, and what is wrong in it."""
    docs: list[Document] = []
    problems: list[Problem] = []
    loader = _Loader(text)
    plain = "&" not in text  # no anchor, so no node is shared (or its own ancestor)
    try:
        while loader.check_node():
            node = loader.get_node()
            line = node.start_mark.line + 1
            if plain:
                try:  # the common case: no anchors, text keys each written once, known tags
                    data = _construct(node, loader)
                except Exception:  # _NotPlain, or a value its tag cannot make: said below
                    pass
                else:
                    if data is not None:
                        docs.append(Document(data, line, node=node))
                    continue
            if _duplicated(node, set()):  # said with lines; otherwise lines wait for a message
                problems.extend(_walk(node, "", {}, rel, set()))
            try:
                data = loader.construct_document(node)
            except (ValueError, TypeError, OverflowError) as exc:
                # A well-formed value its tag cannot make: a date like 2023-02-30, `!!int eight`,
                # an integer of thousands of digits. Said against the value, never a traceback.
                problems.append(_unconstructible(node, exc, rel))
                loader.constructed_objects.clear()
                loader.recursive_objects.clear()
                continue
            if data is not None:
                docs.append(Document(data, line, node=node))
    except yaml.MarkedYAMLError as exc:
        return [], [_yaml_problem(exc, rel, text)]
    except yaml.reader.ReaderError as exc:
        char = (
            exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
        )
        return [], [
            Problem(
                rel,
                f"invalid YAML: character #x{char:04x} is not allowed ({exc.reason})",
                line=_line_of_offset(text, exc.position),
            )
        ]
    except yaml.YAMLError as exc:
        return [], [Problem(rel, f"invalid YAML: {exc}")]
    finally:
        loader.dispose()
    if problems:
        return [], problems
    return docs, []


class _NotPlain(Exception):
    """A document ``_construct`` leaves to PyYAML's constructor (and to ``_walk``'s checks)."""


_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


def _construct(node: yaml.Node, loader: Any) -> Any:
    """A document's data as PyYAML's safe constructor makes it, in a fraction of its time.

    Only for documents without anchors whose mappings have text keys, each written once: the
    others raise ``_NotPlain`` and take the general path, which says where a key is duplicated.
    Scalars go through the same constructor functions, so the values are identical.
    """
    kind = type(node)
    if kind is yaml.ScalarNode:
        if node.tag == _STR:
            return node.value
        make = loader.yaml_constructors.get(node.tag)
        if make is None:
            raise _NotPlain
        return make(loader, node)
    if kind is yaml.MappingNode and node.tag == _MAP:
        data = {}
        for key, value in node.value:
            if type(key) is not yaml.ScalarNode or key.tag != _STR:
                raise _NotPlain
            data[key.value] = _construct(value, loader)
        if len(data) != len(node.value):
            raise _NotPlain  # a key written twice
        return data
    if kind is yaml.SequenceNode and node.tag == _SEQ:
        return [_construct(item, loader) for item in node.value]
    raise _NotPlain


def _unconstructible(document: yaml.Node, exc: Exception, rel: str) -> Problem:
    """Find the scalar that failed to construct and say what it is and how to keep it as text."""
    found = _bad_scalar(document)
    if found is None:
        return Problem(rel, f"a value cannot be read: {exc}", line=document.start_mark.line + 1)
    node, error = found
    kind = node.tag.rsplit(":", 1)[-1]
    shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
    reason = str(error).split(":")[0]
    return Problem(
        rel,
        f"{shown!r} is not a valid {kind} ({reason}); quote it if it is meant as text",
        line=node.start_mark.line + 1,
    )


def _bad_scalar(node: yaml.Node) -> tuple[yaml.ScalarNode, Exception] | None:
    stack = [node]
    seen: set[int] = set()
    probe = yaml.SafeLoader("")
    try:
        while stack:
            current = stack.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            if isinstance(current, yaml.ScalarNode):
                try:
                    probe.construct_object(current)
                except (ValueError, TypeError, OverflowError) as exc:
                    return current, exc
                except yaml.YAMLError:
                    continue
            elif isinstance(current, yaml.SequenceNode):
                stack.extend(reversed(current.value))
            elif isinstance(current, yaml.MappingNode):
                for key, value in reversed(current.value):
                    stack.extend((value, key))
    finally:
        probe.dispose()
    return None


def _duplicated(node: yaml.Node, seen: set[int]) -> bool:
    """Whether some mapping in the document writes a key twice (``_walk`` then says where)."""
    if id(node) in seen:
        return False
    seen.add(id(node))
    if not isinstance(node, yaml.MappingNode):  # as ``_walk``: mappings in mappings
        return False
    keys = [(k.tag, k.value) for k, _ in node.value
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge"]  # fmt: skip
    return len(set(keys)) != len(keys) or any(_duplicated(v, seen) for _, v in node.value)


def _walk(
    node: yaml.Node, prefix: str, key_lines: dict[str, int], rel: str, seen: set[int]
) -> list[Problem]:
    """Record the line of every mapping key (dotted path) and flag keys written twice.

    YAML itself keeps the last of two equal keys without a word: a second ``prompt:`` further down
    would silently replace the first, which is exactly the kind of typo that must never decide
    what gets paid for.
    """
    if id(node) in seen or not isinstance(node, yaml.MappingNode):
        return []
    seen.add(id(node))
    problems = []
    first: dict[tuple[str, str], int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        path = f"{prefix}{key}"
        if key_node.tag != "tag:yaml.org,2002:merge":
            ident = (key_node.tag, key)
            if ident in first:
                problems.append(
                    Problem(
                        rel,
                        f"duplicate key (first written on line {first[ident]}); "
                        "YAML would silently keep only the last one",
                        line=line,
                        field=path,
                    )
                )
            else:
                first[ident] = line
        key_lines.setdefault(path, line)
        problems.extend(_walk(value_node, f"{path}.", key_lines, rel, seen))
    return problems


def _yaml_problem(exc: yaml.MarkedYAMLError, rel: str, text: str) -> Problem:
    """A parser error as one line: what is wrong, where, and where the unclosed thing began."""
    problem = exc.problem or exc.context or "invalid YAML"
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    message = f"invalid YAML: {problem}"
    if exc.context and exc.problem and exc.context_mark is not None:
        context_line = exc.context_mark.line + 1
        message += f" ({exc.context} that starts on line {context_line})"
        if exc.problem_mark is not None and exc.problem_mark.index >= len(text.rstrip()):
            # Found only at the end of the file: the mistake is the thing left unclosed.
            line = context_line
    if "mapping values are not allowed" in problem:
        message += "; quote a value that holds ': ' (or write it as a block with >)"
    elif "tab character" in problem:
        message += "; indent with spaces, not tabs"
    return Problem(rel, message, line=line)


Known = tuple[str, ...] | Mapping[str, tuple[str, ...]]


def pydantic_problems(
    exc: ValidationError, rel: str, doc: Document, *, known: Known = ()
) -> list[Problem]:
    """One Problem per pydantic error, with the field path, the YAML line and what is allowed.

    ``known`` lists the keys allowed at the top level, or maps a dotted parent path ("" for the
    top level) to the keys allowed there; unknown keys get a "did you mean" from it. A required
    key reported missing is left out when an unknown key beside it already suggests it: `promt`
    is one mistake, not two.
    """
    errors = exc.errors()
    suggested: set[str] = set()
    hints: dict[int, str] = {}
    for index, err in enumerate(errors):
        if err["type"] == "extra_forbidden" and err["loc"]:
            loc = [str(part) for part in err["loc"]]
            allowed = _known_at(known, ".".join(loc[:-1]))
            guess = difflib.get_close_matches(loc[-1], allowed, n=1, cutoff=0.6)
            if guess:
                suggested.add(".".join([*loc[:-1], guess[0]]))
                hints[index] = f"unknown key; did you mean '{guess[0]}'?"
            else:
                hints[index] = "unknown key" + (
                    f"; allowed keys: {', '.join(allowed)}" if allowed else ""
                )
    problems = []
    for index, err in enumerate(errors):
        loc = [str(part) for part in err["loc"]]
        field_name = ".".join(loc) or None
        if err["type"] == "missing" and field_name in suggested:
            continue
        message = hints.get(index) or _message(err)
        problems.append(Problem(rel, message, line=doc.line_at(loc), field=field_name))
    return problems


def _known_at(known: Known, parent: str) -> tuple[str, ...]:
    """The keys allowed under ``parent``; ``a.*`` stands for any key under ``a`` (a map of names)."""
    if isinstance(known, Mapping):
        if parent in known:
            return tuple(known[parent])
        head, _, _ = parent.rpartition(".")
        return tuple(known.get(f"{head}.*", ())) if head else ()
    return tuple(known) if parent == "" else ()


def show(value: Any) -> str:
    """A value as the user wrote it in YAML: true/false/null rather than Python's spelling."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, date | datetime):
        return f"the date {value.isoformat()}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_EXPECTED = {
    "string_type": "text",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
    "list_type": "a list",
}


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{show(err['input'])} is not allowed; use one of {expected}"
    if kind in _EXPECTED:
        value = err.get("input")
        if value is None:
            return f"is empty; it must be {_EXPECTED[kind]}"
        message = f"must be {_EXPECTED[kind]}, not {show(value)}"
        if kind == "string_type" and isinstance(value, int | float | date):
            message += "; put it in quotes to use it as text"
        return message
    if kind == "invalid_key":
        return "keys must be names (text)"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg[:1].lower() + msg[1:] if msg else kind
