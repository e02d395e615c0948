"""A sweep's hyperparameters in TensorBoard's HParams dashboard, without TensorFlow.

tensorboard's ``plugins.hparams.summary`` module imports TensorFlow, so this builds the same
summaries from the plugin's own protos (``api_pb2``, ``plugin_data_pb2``, ``metadata``) and writes
them with tensorboard's ``RecordWriter`` (see :func:`_write`):

* ``<logdir>/`` holds the experiment: every hyperparameter (a field path such as
  ``training.learning_rate``) and the sweep's metrics;
* ``<logdir>/<trial id>/`` holds one session per trial: its hyperparameter values, its epoch
  metrics as scalars (the tags the experiment names), and how it ended.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

#: Our trial states as the HParams plugin's session status.
STATUS = {
    "succeeded": api_pb2.STATUS_SUCCESS,
    "stopped": api_pb2.STATUS_SUCCESS,  # stopped early by the scheduler: a finished session
    "failed": api_pb2.STATUS_FAILURE,
    "running": api_pb2.STATUS_RUNNING,
}


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data),
                                        tensor=metadata.NULL_TENSOR)])


def _write(logdir: Path, summaries: Iterable[tuple[Summary, int]]) -> None:
    """One event file, written at once with tensorboard's RecordWriter on a plain file.

    (``EventFileWriter`` goes through ``tf.io.gfile``, which imports TensorFlow when it is
    installed: seconds and hundreds of MB in the sweep driver for nothing.)
    """
    logdir.mkdir(parents=True, exist_ok=True)
    name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
    writer = RecordWriter(open(logdir / name, "wb"))  # closed below
    try:
        writer.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        for summary, step in summaries:
            writer.write(Event(wall_time=time.time(), step=step, summary=summary).SerializeToString())
    finally:
        writer.close()


def _hparam_value(value: Any) -> tuple[str, Any]:
    if isinstance(value, bool):
        return "bool_value", value
    if isinstance(value, (int, float)):
        return "number_value", float(value)
    return "string_value", str(value)


def hparam_info(name: str, values: Iterable[Any]) -> api_pb2.HParamInfo:
    """The experiment's description of one hyperparameter, typed by the values it took."""
    values = list(values)
    info = api_pb2.HParamInfo(name=name)
    if values and all(isinstance(v, bool) for v in values):
        info.type = api_pb2.DATA_TYPE_BOOL
    elif values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        info.type = api_pb2.DATA_TYPE_FLOAT64
    else:
        info.type = api_pb2.DATA_TYPE_STRING
    return info


def write_sweep_hparams(
    logdir: Path | str,
    trials: list[Mapping[str, Any]],
    metrics: list[str],
    *,
    description: str = "",
) -> None:
    """Write the experiment and one session per trial.

    Each trial mapping has ``trial_id``, ``params`` (hyperparameter -> value), ``state`` and
    ``epochs`` (epoch -> metrics).
    """
    root = Path(logdir)
    names = sorted({name for t in trials for name in t["params"]})
    infos = [hparam_info(n, [t["params"][n] for t in trials if n in t["params"]]) for n in names]
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m), display_name=m) for m in metrics]
    experiment = api_pb2.Experiment(description=description, time_created_secs=time.time(),
                                    hparam_infos=infos, metric_infos=metric_infos)
    _write(root, [(_summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)), 0)])
    for trial in trials:
        start = plugin_data_pb2.SessionStartInfo(group_name=str(trial["trial_id"]), start_time_secs=time.time())
        for name, value in trial["params"].items():
            kind, converted = _hparam_value(value)
            setattr(start.hparams[name], kind, converted)
        events: list[tuple[Summary, int]] = [
            (_summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)), 0)
        ]
        for epoch, values in sorted(((int(e), v) for e, v in trial["epochs"].items())):
            scalars = [Summary.Value(tag=m, simple_value=float(values[m])) for m in metrics if m in values]
            if scalars:
                events.append((Summary(value=scalars), epoch))
        end = plugin_data_pb2.SessionEndInfo(status=STATUS.get(trial["state"], api_pb2.STATUS_UNKNOWN),
                                             end_time_secs=time.time())
        last = max((int(e) for e in trial["epochs"]), default=0)
        events.append((_summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)),
                       last))
        _write(root / str(trial["trial_id"]), events)
