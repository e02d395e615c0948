"""What the driver tells whoever watches a run in the foreground (the terminal UI implements it)."""

from __future__ import annotations

from typing import Any, Protocol

from orchestrator.events import Event
from orchestrator.store import JobRecord


class EventHandler(Protocol):
    """Receives the driver's view of a running job (the terminal UI implements this)."""

    def on_start(self, record: JobRecord, info: dict[str, Any]) -> None: ...

    def on_event(self, event: Event) -> None: ...

    def on_finish(self, record: JobRecord) -> None: ...


__all__ = ["EventHandler"]
