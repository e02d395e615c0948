"""A small TensorBoard event writer built on tensorboard's own EventFileWriter.

It needs neither torch nor tensorflow, so the driver can log for either framework with the
same tag names.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Mapping
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

# TensorBoard's file I/O uses TensorFlow's gfile when tensorflow is importable, importing all of
# it (seconds, hundreds of MB, C++ log lines) into a driver that only writes event files. Its own
# marker module `tensorboard.compat.notf` makes it use the bundled stub instead (local files work
# the same). Set before tensorboard first resolves `tensorboard.compat.tf`; later it changes nothing.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


class TensorBoardWriter:
    """Writes scalar summaries (and PNG images) to event files under ``logdir``."""

    def __init__(self, logdir: Path | str) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.logdir))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        summary = Summary(
            value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()]
        )
        self._writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def image_png(self, tag: str, png: bytes, height: int, width: int, step: int, colorspace: int = 3) -> None:
        """One PNG image; ``colorspace`` 1 is grey, 3 RGB, 4 RGBA (TensorBoard's codes)."""
        image = Summary.Image(height=height, width=width, colorspace=colorspace, encoded_image_string=png)
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        self._writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
