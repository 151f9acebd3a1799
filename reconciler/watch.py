"""File events for ``reconcile watch``: watchdog observers turned into debounced asyncio wake-ups.

Only this module knows about watchdog. It watches ``specs/`` (recursively), the repo root (for
``reconcile.yaml`` and a ``specs/`` folder that appears later) and the folders of the images specs
reference, and filters out everything else, including the tool's own writes to ``videos/`` and
``state/``. Editors save through temp files and renames, so one save is several events: they are
coalesced into one wake-up once the folder has been quiet for ``debounce`` seconds (or at the
latest ``max_delay`` after the first), so a burst of saves costs one reconcile.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

SPEC_SUFFIXES = (".yaml", ".yml")


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        for raw in paths:
            path = os.fsdecode(raw)
            if path and self.watcher.relevant(Path(path)):
                self.watcher.notify(path)
                return


class Watcher:
    """Turns file events under an asset repo into ``await changed()`` wake-ups."""

    def __init__(
        self,
        repo: Path,
        loop: asyncio.AbstractEventLoop,
        *,
        debounce: float = 0.1,
        max_delay: float = 1.0,
    ) -> None:
        self.repo = repo
        self.loop = loop
        self.debounce = debounce
        self.max_delay = max_delay
        self.images: set[Path] = set()
        self._observer: BaseObserver = Observer()
        self._watches: dict[Path, ObservedWatch] = {}
        self._handler = _Handler(self)
        self._event = asyncio.Event()
        self._last = 0.0
        self._first = 0.0
        self.changed_paths: set[str] = set()

    def start(self) -> None:
        self._observer.start()
        self.refresh(())

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=2)

    def refresh(self, images: Iterable[Path]) -> None:
        """(Re)schedule watches: specs/, the root, and each referenced image's folder."""
        self.images = {p.resolve() for p in images}
        wanted = {self.repo: False}
        if (self.repo / "specs").is_dir():
            wanted[self.repo / "specs"] = True
        for image in self.images:
            if image.parent.is_dir() and not image.parent.is_relative_to(self.repo / "specs"):
                wanted.setdefault(image.parent, False)
        for path in set(self._watches) - set(wanted):
            self._observer.unschedule(self._watches.pop(path))
        for path, recursive in wanted.items():
            if path not in self._watches:
                self._watches[path] = self._observer.schedule(
                    self._handler, str(path), recursive=recursive
                )

    def relevant(self, path: Path) -> bool:
        """Specs, reconcile.yaml, referenced images, and specs/ itself appearing."""
        try:
            rel = path.relative_to(self.repo)
        except ValueError:
            return path in self.images
        parts = rel.parts
        if not parts:
            return False
        if parts[0] == "specs":
            if len(parts) == 1:
                return True
            name = parts[-1]
            # Editor temp files (.swp, ~, .#lock) end in other suffixes; renames onto a spec count.
            return name.endswith(SPEC_SUFFIXES) and not name.startswith(".")
        if rel.as_posix() == "reconcile.yaml":
            return True
        return path in self.images or path.resolve() in self.images

    def notify(self, path: str) -> None:
        """Called on watchdog's thread: hand the event to the loop's thread."""
        self.loop.call_soon_threadsafe(self._mark, path)

    def _mark(self, path: str) -> None:
        now = time.monotonic()
        if not self._event.is_set():
            self._first = now
        self._last = now
        self.changed_paths.add(path)
        self._event.set()

    async def changed(self) -> set[str]:
        """Wait for a burst of events to settle; return the paths it touched."""
        await self._event.wait()
        while True:
            now = time.monotonic()
            quiet_at = self._last + self.debounce
            latest = self._first + self.max_delay
            if now >= quiet_at or now >= latest:
                break
            await asyncio.sleep(min(quiet_at, latest) - now)
        self._event.clear()
        paths, self.changed_paths = self.changed_paths, set()
        return paths
