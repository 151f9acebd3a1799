"""Chains of specs: ``video: {from: NAME}`` extends another spec's output.

A child's key includes its source's key, so changing a spec re-plans every spec built on it; this
module resolves each chain once all specs are loaded: the source's key, how deep the chain is, how
long the result will be, and what the API refuses up front (a source not at 720p, longer than
141 s, or more than 20 extensions deep). A cycle or an unknown name is a problem naming the files
involved. Pure: plain ``Desired`` values in, keyed ``Desired`` values and problems out.
"""

from __future__ import annotations

from dataclasses import replace

from .errors import Problem
from .facts import EXTENSION_RESOLUTION, EXTENSION_SECONDS, MAX_EXTENSIONS, MAX_SOURCE_SECONDS
from .spec import Desired, spec_key


def resolve(specs: list[Desired]) -> tuple[list[Desired], list[Problem]]:
    """Every spec keyed, extensions of specs with their source's key; problems for the rest."""
    if all(s.source is None for s in specs):  # no chain (the common case): one pass, no calls
        return [s if s.length == _own_length(s) else replace(s, length=_own_length(s))
                for s in specs], []  # fmt: skip
    by_name = {s.name: s for s in specs}
    done: dict[str, Desired | None] = {}
    problems: list[Problem] = []

    def problem(spec: Desired, message: str) -> None:
        problems.append(Problem(spec.file, message, line=spec.line, field="video.from"))

    def visit(spec: Desired, path: list[str]) -> Desired | None:
        if spec.name in done:
            return done[spec.name]
        if spec.source is None:
            length = _own_length(spec)
            # The loader sets it already: no copy of ten thousand specs for nothing.
            done[spec.name] = spec if spec.length == length else replace(spec, length=length)
            return done[spec.name]
        if spec.name in path:
            cycle = [*path[path.index(spec.name) :], spec.name]
            files = sorted({by_name[n].file for n in cycle})
            for name in cycle[:-1]:
                problem(by_name[name], f"{' → '.join(cycle)} is a cycle ({', '.join(files)})")
                done[name] = None
            return None
        parent_spec = by_name.get(spec.source)
        if parent_spec is None:
            problem(spec, f"no valid spec named {spec.source!r} to extend")
            done[spec.name] = None
            return None
        parent = visit(parent_spec, [*path, spec.name])
        if spec.name in done:  # marked as part of a cycle while visiting its source
            return done[spec.name]
        done[spec.name] = None
        where = f"{parent_spec.file}:{parent_spec.line}"
        if parent is None:
            problem(spec, f"its source {spec.source!r} ({where}) is invalid")
            return None
        if parent.resolution != EXTENSION_RESOLUTION:
            problem(spec, f"its source {spec.source!r} ({where}) is {parent.resolution}; "
                    f"an extension needs a {EXTENSION_RESOLUTION} source")  # fmt: skip
            return None
        if parent.parameters.get("aspectRatio") != spec.parameters.get("aspectRatio"):
            problem(spec, f"aspectRatio must match its source {spec.source!r} "
                    f"({parent.parameters.get('aspectRatio')}, {where})")  # fmt: skip
            return None
        if parent.depth + 1 > MAX_EXTENSIONS:
            problem(spec, f"is extension number {parent.depth + 1} in a row; the API allows "
                    f"{MAX_EXTENSIONS}")  # fmt: skip
            return None
        if parent.length is not None and parent.length > MAX_SOURCE_SECONDS:
            problem(spec, f"its source {spec.source!r} will be {parent.length:g} s long; the API "
                    f"extends videos of at most {MAX_SOURCE_SECONDS:g} s")  # fmt: skip
            return None
        child = replace(
            spec,
            source_key=parent.key,
            depth=parent.depth + 1,
            length=None if parent.length is None else parent.length + EXTENSION_SECONDS,
        )
        done[spec.name] = replace(child, key=spec_key(child))
        return done[spec.name]

    for spec in specs:
        visit(spec, [])
    keyed = [d for d in (done.get(s.name) for s in specs) if d is not None]
    return keyed, problems


def _own_length(spec: Desired) -> float | None:
    """Seconds of a spec's video when it extends nothing of ours (unknown for a video by URI)."""
    return float(spec.duration) if spec.video_uri is None else None


def descendants(specs: list[Desired], name: str) -> list[str]:
    """Every spec built on ``name``, directly or not, in chain order."""
    children: dict[str, list[str]] = {}
    for spec in specs:
        if spec.source is not None:
            children.setdefault(spec.source, []).append(spec.name)
    found, todo = [], list(children.get(name, []))
    while todo:
        current = todo.pop(0)
        found.append(current)
        todo.extend(children.get(current, []))
    return found
