"""One exception tree for the whole project.

Every error says what failed, the bad value, and the fix. Errors carry their meaning as data
(``field_path``, ``reasons``, ``retry_after``, ``transient``) so that callers such as the CLI
or the Kubernetes operator can act on them without parsing strings.

Exit codes used by the CLI:
  * 2 -- the user's input is wrong (spec, arguments, unknown job, missing optional dependency);
  * 1 -- the job or an operation failed at run time;
  * 130 -- interrupted by the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EXIT_USER_ERROR = 2
EXIT_RUNTIME_ERROR = 1
EXIT_INTERRUPTED = 130

_MISSING: Any = object()


class OrchestratorError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code: int = EXIT_RUNTIME_ERROR
    #: A transient error may succeed when retried (the operator maps it to kopf's TemporaryError).
    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        fix: str | None = None,
        reasons: list[str] | tuple[str, ...] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.reasons = list(reasons)
        self.retry_after = retry_after

    def render(self) -> str:
        """Human-readable text for the terminal: message, reasons, then the fix."""
        lines = [self.message]
        lines += [f"  - {r}" for r in self.reasons]
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


@dataclass(frozen=True)
class SpecIssue:
    """One problem found in a job spec: where it is, what is wrong, and how to fix it."""

    field_path: str
    message: str
    value: Any = _MISSING
    fix: str | None = None
    line: int | None = None

    def render(self, source: str | None = None) -> str:
        where = source or "<spec>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        head = f"{where}: {self.field_path or '(top level)'}: {self.message}"
        if self.value is not _MISSING:
            head += f" (got {_short_repr(self.value)})"
        if self.fix:
            head += f"\n    fix: {self.fix}"
        return head


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SpecError(OrchestratorError):
    """A job spec (file, override or API object) is invalid. Holds every issue found."""

    exit_code = EXIT_USER_ERROR

    def __init__(
        self,
        issues: list[SpecIssue],
        *,
        source: str | None = None,
    ) -> None:
        self.issues = list(issues)
        self.source = source
        count = len(self.issues)
        title = f"invalid job spec {source}" if source else "invalid job spec"
        title += f": {count} problem{'s' if count != 1 else ''}"
        super().__init__(title)

    @property
    def field_path(self) -> str | None:
        return self.issues[0].field_path if self.issues else None

    #: Issues shown by :meth:`render`; the rest are counted (a non-spec file can make thousands).
    max_shown = 20

    def render(self) -> str:
        shown = ["  " + i.render(self.source) for i in self.issues[: self.max_shown]]
        hidden = len(self.issues) - len(shown)
        if hidden > 0:
            shown.append(f"  ... and {hidden} more (fix these first)")
        return "\n".join([self.message] + shown)


class SpecFileError(SpecError):
    """The spec file itself cannot be used: missing, unreadable, not UTF-8, not YAML, empty."""

    def __init__(
        self, source: str, message: str, *, fix: str, line: int | None = None, field_path: str = ""
    ) -> None:
        super().__init__([SpecIssue(field_path, message, fix=fix, line=line)], source=source)


class UsageError(OrchestratorError):
    """A command was called with arguments that cannot work (unknown job id, bad option)."""

    exit_code = EXIT_USER_ERROR


class NotAvailableError(OrchestratorError):
    """A feature needs something that is not installed or not built yet."""

    exit_code = EXIT_USER_ERROR


class JobNotFoundError(UsageError):
    """No job with this id (or unique prefix) exists in the job store."""


class JobStoreError(OrchestratorError):
    """The job store (``jobs.db`` under ORCHESTRATOR_HOME) cannot be used."""


class JobStoreCorruptError(JobStoreError):
    """The job store file is not a readable SQLite database (its fix: move it aside)."""

    exit_code = EXIT_USER_ERROR


class JobStoreBusyError(JobStoreError):
    """Another process held the job store's lock for longer than the busy timeout."""

    transient = True


class BackendError(OrchestratorError):
    """A backend (local Ray, remote Ray, Kubernetes) could not do what was asked."""


class TransientBackendError(BackendError):
    """The backend may succeed later (connection refused, API server busy)."""

    transient = True


class TrainingError(OrchestratorError):
    """Training ran and failed (a worker raised, or the failure budget ran out)."""


class CheckpointError(OrchestratorError):
    """A checkpoint is missing, truncated or fails its checksum."""


class StorageError(OrchestratorError):
    """Job storage (a bucket, a shared volume) cannot be read or written."""


@dataclass
class ErrorReport:
    """A serialisable view of an error, for `--output json`."""

    type: str
    message: str
    fix: str | None = None
    issues: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_error(cls, err: OrchestratorError) -> ErrorReport:
        issues = []
        if isinstance(err, SpecError):
            for i in err.issues:
                item: dict[str, Any] = {"field_path": i.field_path, "message": i.message}
                if i.line is not None:
                    item["line"] = i.line
                if i.value is not _MISSING:
                    item["value"] = _short_repr(i.value)
                if i.fix:
                    item["fix"] = i.fix
                issues.append(item)
        return cls(type=type(err).__name__, message=err.message, fix=err.fix, issues=issues)
