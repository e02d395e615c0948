"""The frame every driver run shares: the job's log, running in the store, signals, one ending.

:class:`RunFrame` is the part of a run that does not depend on what runs: the job driver
(:class:`orchestrator.execution.driver.Driver`) and the sweep driver
(:class:`orchestrator.sweep.runner.SweepDriver`) both mark their record running (with the
driver's pid, so a killed driver is detected later), take SIGINT/SIGTERM while they run, and end
in exactly one terminal state whatever happens: a forced stop is a cancel, an
:class:`~orchestrator.errors.OrchestratorError` fails with its message, anything else fails as a
driver error with the traceback in the log.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.store import JobRecord, JobState, JobStore, process_start_time

log = logging.getLogger("orchestrator.driver")


def attach_job_log(path: Path) -> logging.Handler:
    """Send the ``orchestrator`` loggers' records (INFO and up) to a job's ``driver.log``."""
    from orchestrator.private import private_file

    handler = logging.FileHandler(private_file(path), encoding="utf-8")  # the log repeats the spec
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("orchestrator")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler


def detach_job_log(handler: logging.Handler | None) -> None:
    """Undo :func:`attach_job_log` (None: nothing was attached)."""
    if handler is not None:
        logging.getLogger("orchestrator").removeHandler(handler)
        handler.close()


def shutdown_ray() -> None:
    """``ray.shutdown()`` at a driver's exit, best effort (a failure is logged, never raised)."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort at exit
        log.warning("ray.shutdown failed:\n%s", traceback.format_exc())


def on_main_thread() -> bool:
    """Signal handlers can only be installed from the main thread."""
    return threading.current_thread() is threading.main_thread()


class RunFrame(ABC):
    """Runs a body between "running" and a terminal state; subclasses say how to finish."""

    #: How a failure outside the job's own errors is named in its message ("driver error: ...").
    error_label = "driver"

    store: JobStore
    record: JobRecord
    install_signal_handlers: bool
    _log_handler: logging.Handler | None = None

    @abstractmethod
    def _finish(self, state: JobState, message: str | None) -> JobRecord:
        """Write the terminal state (with ``message``) and everything the run leaves behind."""

    @abstractmethod
    def _forced_cancel_message(self) -> str:
        """The message of a run stopped at once (a second Ctrl-C, or workers that would not stop)."""

    @abstractmethod
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT or SIGTERM while the run is in the frame."""

    @abstractmethod
    def _shutdown(self) -> None:
        """Release what the run holds (Ray, writers, the job log); called once, last."""

    def run_framed(self, log_dir: Path, body: Callable[[], JobRecord],
                   signal_env: dict[str, str] | None = None) -> JobRecord:
        """Mark the record running and run ``body`` to a terminal state.

        ``signal_env`` is set while our signal handlers are installed (and restored after), for
        libraries that would otherwise take the signals themselves.
        """
        self._log_handler = attach_job_log(log_dir / "driver.log")
        started = self.store.transition(
            self.record.id, JobState.RUNNING, {JobState.PENDING}, started_at=time.time(), driver_pid=os.getpid(),
            driver_started=process_start_time(os.getpid()), message=None,
        )
        if not started:
            log.info("%s is no longer pending; nothing to run", self.record.id)
            detach_job_log(self._log_handler)
            return self.store.get(self.record.id)
        previous: dict[int, Any] = {}
        saved_env: dict[str, str | None] = {}
        if self.install_signal_handlers and on_main_thread():
            for name, value in (signal_env or {}).items():
                saved_env[name] = os.environ.get(name)
                os.environ[name] = value
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            return body()
        except KeyboardInterrupt:
            return self._finish(JobState.CANCELLED, self._forced_cancel_message())
        except OrchestratorError as exc:
            log.error("%s", exc.render())
            return self._finish(JobState.FAILED, exc.message)
        except Exception as exc:  # noqa: BLE001 - the run must end in a state, never stay running
            log.error("%s error:\n%s", self.error_label, traceback.format_exc())
            return self._finish(JobState.FAILED, f"{self.error_label} error: {type(exc).__name__}: {exc}")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for name, old in saved_env.items():
                if old is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old
            self._shutdown()

    def _retake_signals(self) -> None:
        """``ray.init`` installs its own SIGTERM handler (it logs "SIGTERM received" and exits):
        take the signals back, so a cancel (SIGTERM) stops the way the run means to."""
        if self.install_signal_handlers and on_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._on_signal)

    def _update_result(self, **values: Any) -> None:
        """Merge ``values`` into the record's result."""
        record = self.store.get(self.record.id)
        self.store.update(self.record.id, result={**record.result, **values})
