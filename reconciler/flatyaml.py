"""A parser for the one flat YAML shape specs are written in, several times faster than libyaml.

A spec file is almost always top-level ``key: value`` lines, a folded or literal prompt, comments
and ``---`` between documents. Building libyaml's events and nodes for that is most of a cold
``plan``'s time, so such text is read here line by line instead. This parser accepts only what it
can read exactly as PyYAML's C loader would (the same scalar resolvers and constructor
functions, so ``8`` is the same int and ``2026-01-02`` the same date) and answers ``None`` for
anything else: anchors, tags, flow collections, nesting, multi-line plain or quoted scalars,
escapes, tabs, trailing spaces, a key written twice, a value that will not construct. The caller
then takes the full path, which is also the one that says what is wrong and where.
``tests/test_flatyaml.py`` holds the two to the same documents, lines and types.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

# A top-level key of letters, digits and underscores, its colon, one or more spaces, a value.
# libyaml looks for a key's colon within 1024 characters of its start: a longer key is an error.
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]{0,1023}): +(.*)\Z")
_DOUBLE = re.compile(r'"([^"\\]*)"(?: +#.*)?\Z')  # one line, no escapes
_SINGLE = re.compile(r"'((?:[^']|'')*)'(?: +#.*)?\Z")
_BLOCK = re.compile(r"([>|])(-?)\Z")  # clip or strip chomping; no indentation indicator
# Characters a plain scalar cannot start with (YAML's indicators), kept whole for simplicity:
# `-5` or `:x` would be plain in YAML, but no spec needs them on the fast path.
_INDICATORS = frozenset("-?:,[]{}#&*!|>'\"%@`")
_CONSTRUCTOR = SafeConstructor()
# Short scalars already read, per loader: thousands of specs repeat the same keys, models and
# numbers (a prompt is rarely repeated, and would hold megabytes). Every value a scalar can make
# (text, numbers, booleans, None, dates) is immutable. A full cache is replaced, not cleared,
# so a load on another thread (watch) never sees it emptied under it.
_SEEN: dict[Any, dict[str, Any]] = {}
_SEEN_MOST = 50_000
_SEEN_LONGEST = 64
_MISSING = object()

Doc = tuple[dict[str, Any], int, dict[str, int]]  # data, its first line, each key's line


class _NotFlat(Exception):
    pass


def documents(text: str, loader: Any) -> list[Doc] | None:
    """Each non-empty document of ``text`` (as ``loader`` would construct it), or ``None``.

    ``loader`` supplies the implicit resolvers and constructors (the caller's safe loader, which
    reads ``16:9`` as text): what a plain scalar means is decided by exactly the same rules.
    It must be a safe loader whose constructors are ``SafeConstructor``'s: they are called on
    one shared instance of it, not on a parser.
    """
    if not text.endswith("\n") or "\t" in text or " \n" in text:
        return None  # tabs and trailing spaces have rules of their own: not worth copying
    if None in loader.yaml_implicit_resolvers or loader.yaml_path_resolvers:
        return None  # resolvers for every first character, or by place: not the safe loader's
    if not text.replace("\n", "").isprintable():
        return None  # libyaml refuses some characters, and CR, NEL, LS and PS break lines
    seen = _SEEN.get(loader)
    if seen is None or len(seen) > _SEEN_MOST:
        seen = _SEEN[loader] = {}
    try:
        return _documents(text.split("\n")[:-1], loader, seen)
    except _NotFlat:
        return None


def _documents(lines: list[str], loader: Any, seen: dict[str, Any]) -> list[Doc]:
    docs: list[Doc] = []
    data: dict[str, Any] = {}
    where: dict[str, int] = {}
    count = len(lines)
    i = 0
    while i < count:
        line = lines[i]
        i += 1
        if not line or line[0] == "#":
            continue
        if line == "---":
            if data:
                docs.append((data, min(where.values()), where))
            data, where = {}, {}
            continue
        match = _KEY.match(line)
        if match is None:
            raise _NotFlat  # indented, a sequence, flow style, a directive, `...`
        key, raw = match.groups()
        if key in data:
            raise _NotFlat  # written twice: the full path says where
        if type(seen.get(key)) is not str and _resolve(key, loader) is not key:
            raise _NotFlat  # `true:` and kin (a key read before as text needs no check)
        seen[key] = key
        where[key] = i
        block = _BLOCK.match(raw)
        if block is not None:
            data[key], i = _block(lines, i, block[1] == ">", block[2] == "")
        else:
            value = seen.get(raw, _MISSING)
            if value is _MISSING:
                value = _scalar(raw, loader)
                if len(raw) <= _SEEN_LONGEST:
                    seen[raw] = value
            data[key] = value
    if data:
        docs.append((data, min(where.values()), where))
    return docs


def _scalar(raw: str, loader: Any) -> Any:
    first = raw[0]
    if first == '"':
        match = _DOUBLE.match(raw)
        if match is None:
            raise _NotFlat
        return match[1]
    if first == "'":
        match = _SINGLE.match(raw)
        if match is None:
            raise _NotFlat
        return match[1].replace("''", "'")
    if first in _INDICATORS:
        raise _NotFlat
    comment = raw.find(" #")
    if comment >= 0:
        raw = raw[:comment].rstrip(" ")
    if ": " in raw or raw.endswith(":"):
        raise _NotFlat  # a nested mapping, or an error the full path words
    return _resolve(raw, loader)


def _resolve(raw: str, loader: Any) -> Any:
    """A plain scalar's value: its implicit tag by the loader's resolvers, then its constructor."""
    for tag, regexp in loader.yaml_implicit_resolvers.get(raw[0], ()):
        if regexp.match(raw):
            make = loader.yaml_constructors.get(tag)
            if make is None:
                raise _NotFlat  # `<<` or `=`: tags with no value of their own
            try:
                return make(_CONSTRUCTOR, yaml.ScalarNode(tag, raw))
            except Exception:  # a date like 2023-02-30: the full path says so
                raise _NotFlat from None
    return raw


def _block(lines: list[str], i: int, folded: bool, clip: bool) -> tuple[str, int]:
    """A ``>`` or ``|`` scalar whose lines all share the first line's indentation.

    More-indented lines, leading empty lines and keep chomping (``+``) have rules of their own:
    they are left to the full path.
    """
    count = len(lines)
    first = lines[i] if i < count else ""
    indent = len(first) - len(first.lstrip(" "))
    if indent == 0:
        raise _NotFlat  # empty, or its first line empty
    body: list[str] = []
    while i < count:
        line = lines[i]
        if line:
            depth = len(line) - len(line.lstrip(" "))
            if depth == 0:
                break
            if depth != indent:
                raise _NotFlat
            line = line[indent:]
        body.append(line)
        i += 1
    while not body[-1]:
        body.pop()  # trailing empty lines: clip and strip drop them
    if not folded:
        value = "\n".join(body)
    else:  # lines join with a space; a run of n empty lines between two becomes n newlines
        parts = [body[0]]
        empty = 0
        for line in body[1:]:
            if not line:
                empty += 1
                continue
            parts.append("\n" * empty if empty else " ")
            parts.append(line)
            empty = 0
        value = "".join(parts)
    return (value + "\n" if clip else value), i
