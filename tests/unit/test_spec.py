"""Job spec validation: good specs load, bad specs fail with exit 2 and a useful message."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.spec import job_spec_json_schema, load_spec
from orchestrator.spec.models import JobSpec, parse_memory
from tests.conftest import REPO

GOOD = textwrap.dedent(
    """\
    name: good-job
    model:
      type: cnn
    training:
      epochs: 2
    """
)


def write(tmp_path: Path, text: str | bytes, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text))
    return path


def run_validate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["validate", *args])
    return result.exit_code, result.output


ALIAS_BOMB = "name: bomb\nmodel: {type: cnn}\n" + "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
)

# (id, spec text or bytes or None for "no file", extra args, substrings the message must contain)
BAD_SPECS: list[tuple[str, str | bytes | None, list[str], list[str]]] = [
    ("unknown-field", "name: j\nmodel: {type: cnn}\ntraining:\n  epoch: 3\n", [],
     ["training.epoch", "unknown field", "did you mean `epochs`", ":4"]),
    ("wrong-type", "name: j\nmodel: {type: cnn}\ntraining:\n  epochs: ten\n", [],
     ["training.epochs", "whole number", "'ten'"]),
    ("out-of-range", "name: j\nmodel: {type: cnn}\ntraining:\n  epochs: 0\n", [],
     ["training.epochs", "at least 1", ":4"]),
    ("missing-file", None, [], ["no such file"]),
    ("yaml-syntax", "name: j\nmodel: {type: cnn\ntraining: [\n", [], ["YAML syntax error", "spec.yaml:"]),
    ("empty-file", "", [], ["the file is empty"]),
    ("comment-only-file", "# nothing here\n", [], ["the file is empty"]),
    ("list-at-top", "- name: j\n- model: cnn\n", [], ["top level must be a mapping", "not a list"]),
    ("list-for-mapping", "name: j\nmodel: {type: cnn}\ntraining: [1, 2]\n", [], ["training", "as a mapping"]),
    ("not-utf8", b"name: j\nmodel: {type: cnn}\n# caf\xe9\n", [], ["not UTF-8", "byte 0xe9", ":3"]),
    ("alias-bomb", ALIAS_BOMB, [], ["alias bomb"]),
    ("recursive-alias", "name: j\nmodel: &m {type: cnn, self: *m}\n", [], ["spec.yaml"]),
    ("unknown-model-type", "name: j\nmodel: {type: transformer}\n", [], ["model.type", "'cnn'"]),
    ("missing-name", "model: {type: cnn}\n", [], ["name", "required field is missing"]),
    ("bad-name", "name: My Job\nmodel: {type: cnn}\n", [], ["name", "'My Job'"]),
    ("duplicate-key", "name: j\nmodel: {type: cnn}\nname: k\n", [], ["appears twice", ":3"]),
    ("unknown-data-source", "name: j\nmodel: {type: cnn}\ndata: {source: mnist}\n", [],
     ["data.source", "unknown data source"]),
    ("missing-npz", "name: j\nmodel: {type: cnn}\ndata: {source: nothere.npz}\n", [],
     ["data.source", "data file not found"]),
    ("negative-workers", "name: j\nmodel: {type: cnn}\nresources: {workers: -1}\n", [],
     ["resources.workers", "at least 1"]),
    ("optimizer-typo", "name: j\nmodel: {type: cnn}\ntraining: {optimizer: adamm}\n", [],
     ["training.optimizer", "did you mean `adam`"]),
    ("nccl-without-gpu", "name: j\nmodel: {type: cnn}\nsync: {backend: nccl}\n", [],
     ["sync.backend", "nccl needs GPUs"]),
    ("nccl-on-shared-gpus",
     "name: j\nmodel: {type: cnn}\nresources: {workers: 2, gpus_per_worker: 0.5}\nsync: {backend: nccl}\n", [],
     ["sync.backend", "NCCL refuses two ranks on one device", "gpus_per_worker: 1"]),
    ("nccl-on-tpu",
     "name: j\nmodel: {type: cnn}\nresources: {workers: 1, gpus_per_worker: 4, accelerator: tpu-v6e-slice}\n"
     "sync: {backend: nccl}\n", [],
     ["sync.backend", "nccl needs GPUs (TPU chips are not CUDA devices)"]),
    ("gpu-and-tpu-types",
     "name: j\nmodel: {type: cnn}\nresources: {gpus_per_worker: 1, accelerators: [nvidia-a100-40gb, tpu-v5p-slice]}\n",
     [], ["resources.accelerators", "mixes GPU and TPU types"]),
    ("tpu-workers-without-topology",
     "name: j\nmodel: {type: cnn}\nresources: {workers: 4, gpus_per_worker: 4, accelerator: tpu-v5p-slice}\n", [],
     ["resources.topology", "4 workers on TPUs need the slice topology",
      "fix: set resources.topology: 2x2x4 (16 chips on 4 hosts of 4)"]),
    ("tpu-workers-on-a-list",
     "name: j\nmodel: {type: cnn}\nresources: {workers: 2, gpus_per_worker: 4, topology: 2x4,\n"
     "  accelerators: [tpu-v5-lite-podslice, tpu-v6e-slice]}\n", [],
     ["resources.accelerators", "need one TPU type"]),
    ("fractions", "name: j\nmodel: {type: cnn}\ndata: {validation_fraction: 0.45, test_fraction: 0.45}\n", [],
     ["data.test_fraction", "20%"]),
    ("model-and-entrypoint", "name: j\nmodel: {type: cnn}\nentrypoint: train.py:main\n", [],
     ["model", "exactly one"]),
    ("neither-model-nor-entrypoint", "name: j\n", [], ["model", "exactly one"]),
    ("bad-accelerator", "name: j\nmodel: {type: cnn}\nresources: {accelerator: 'A100!'}\n", [],
     ["resources.accelerator", "not an accelerator type"]),
    ("bad-memory", "name: j\nmodel: {type: cnn}\nresources: {memory: 4 bananas}\n", [],
     ["resources.memory", "memory size"]),
    ("batch-below-workers", "name: j\nmodel: {type: cnn}\nresources: {workers: 8}\ntraining: {batch_size: 4}\n", [],
     ["training.batch_size", "at least 8"]),
    ("scalar-for-mapping", "name: j\nmodel: cnn\n", [], ["model"]),
    ("unknown-cnn-field", "name: j\nmodel: {type: cnn, filters: [8]}\n", [],
     ["model.filters", "did you mean `conv_filters`"]),
    ("bad-override-value", GOOD, ["--set", "training.epochs=abc"], ["training.epochs", "'abc'"]),
    ("unknown-override-field", GOOD, ["--set", "training.epoc=3"], ["training.epoc", "did you mean `epochs`"]),
    ("override-without-equals", GOOD, ["--set", "training.epochs"], ["path=value"]),
    ("unsupported-tag", "name: !!python/object:os.system j\nmodel: {type: cnn}\n", [], ["unsupported YAML tag"]),
]


@pytest.mark.parametrize("case", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_exits_2_with_a_clear_message(tmp_path: Path, case: tuple) -> None:
    _, text, extra, expected = case
    path = tmp_path / "spec.yaml" if text is None else write(tmp_path, text)
    code, output = run_validate(str(path), *extra)
    assert code == 2, output
    assert "Traceback" not in output
    assert "spec.yaml" in output or "--set" in output
    for fragment in expected:
        assert fragment in output, f"{fragment!r} not in:\n{output}"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    code, output = run_validate(str(tmp_path))
    assert code == 2
    assert "is a directory" in output


def test_bad_spec_through_the_real_binary(tmp_path: Path) -> None:
    """The installed console script itself: exit code 2, no traceback, field path named."""
    path = write(tmp_path, "name: j\nmodel: {type: cnn}\ntraining:\n  epochs: -3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "submit", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "training.epochs" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_alias_bomb_stops_at_the_node_budget(tmp_path: Path) -> None:
    """10**9 values if it were expanded; the loader gives up after MAX_NODES instead."""
    from orchestrator.spec.loader import MAX_NODES

    path = write(tmp_path, ALIAS_BOMB)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert f"more than {MAX_NODES} values" in err.value.render()


def test_every_job_file_loads_and_validates(example_jobs: Path) -> None:
    files = sorted((example_jobs / "jobs").glob("*.yaml"))  # the data examples' files written by the generator
    assert files, "jobs/ has no specs"
    for path in files:
        if "\ntune:" in path.read_text():  # a sweep spec (`orchestrator tune`): a job spec plus `tune:`
            from orchestrator.sweep.loader import load_sweep_spec

            spec = load_sweep_spec(path).job
        else:
            spec = load_spec(path)
        assert spec.name
        assert isinstance(spec, JobSpec)


def test_cnn_yaml_values() -> None:
    spec = load_spec(REPO / "jobs" / "cnn.yaml")
    assert spec.resources.workers == 2
    assert spec.model is not None and spec.model.type == "cnn"
    assert spec.data.source == "digits"
    assert spec.per_worker_batch_size == spec.training.batch_size // 2
    assert spec.sync_backend == "gloo"


@pytest.mark.parametrize(("workers", "gpus", "backend"), [
    (2, 0.0, "gloo"),   # CPU workers
    (2, 1.0, "nccl"),   # a GPU each
    (1, 0.5, "nccl"),   # one worker on part of a GPU: no device is shared
    (2, 0.5, "gloo"),   # two workers on one GPU: NCCL refuses duplicate devices
    (4, 2.0, "nccl"),
])
def test_auto_sync_backend(workers: int, gpus: float, backend: str) -> None:
    spec = JobSpec.model_validate({
        "name": "j", "model": {"type": "cnn"},
        "resources": {"workers": workers, "gpus_per_worker": gpus},
    })
    assert spec.sync_backend == backend


def test_overrides_are_validated_and_applied(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    spec = load_spec(path, ["training.epochs=7", "model.dropout=0.1", "resources.workers=1"])
    assert spec.training.epochs == 7
    assert spec.model is not None and spec.model.dropout == 0.1
    assert spec.resources.workers == 1


def test_merge_keys_and_anchors_work(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        defaults: &d {epochs: 4, batch_size: 32}
        name: j
        model: {type: cnn}
        training:
          <<: *d
          epochs: 5
        """)
    with pytest.raises(SpecError) as err:  # 'defaults' is not a field...
        load_spec(path)
    assert err.value.issues[0].field_path == "defaults"
    path = write(tmp_path, "name: j\nmodel: {type: cnn}\ntraining: &t {epochs: 4, batch_size: 32}\n")
    assert load_spec(path).training.batch_size == 32


def test_spec_is_immutable() -> None:
    spec = JobSpec(name="x", model={"type": "cnn"})
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen models
        spec.name = "y"  # type: ignore[misc]


def test_relative_paths_resolve_against_the_spec_file(tmp_path: Path) -> None:
    import numpy as np

    np.savez(tmp_path / "d.npz", x=np.zeros((10, 4)), y=np.zeros(10))
    (tmp_path / "train.py").write_text("def main(config):\n    pass\n")
    spec = load_spec(write(tmp_path, "name: j\nentrypoint: train.py:main\ndata: {source: d.npz}\n"))
    assert spec.data.source == str((tmp_path / "d.npz").resolve())
    assert spec.entrypoint == f"{(tmp_path / 'train.py').resolve()}:main"


def test_schema_command_prints_the_json_schema() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema == json.loads(json.dumps(job_spec_json_schema()))
    assert schema["additionalProperties"] is False
    assert "training" in schema["properties"]
    assert schema["$defs"]["TrainingSpec"]["properties"]["epochs"]["minimum"] == 1


def test_validate_prints_defaults() -> None:
    code, output = run_validate(str(REPO / "jobs" / "cnn.yaml"), "--output", "json")
    assert code == 0
    spec = json.loads(output.strip().splitlines()[-1])["spec"]
    assert spec["checkpoint"]["keep"] == 3
    assert spec["sync"]["compression"] == "none"


def test_parse_memory() -> None:
    assert parse_memory("4Gi") == 4 * 2**30
    assert parse_memory("512Mi") == 512 * 2**20
    assert parse_memory("2GB") == 2 * 10**9
    assert parse_memory(1000) == 1000
    with pytest.raises(ValueError):
        parse_memory("lots")


def test_help_and_validation_do_not_import_heavy_frameworks() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from click.testing import CliRunner
        from orchestrator.cli import main
        r1 = CliRunner().invoke(main, ["--help"])
        r2 = CliRunner().invoke(main, ["validate", r"{REPO / 'jobs' / 'cnn.yaml'}"])
        r3 = CliRunner().invoke(main, ["submit", "--dry-run", r"{REPO / 'jobs' / 'cnn.yaml'}"])
        assert r1.exit_code == 0 and r2.exit_code == 0 and r3.exit_code == 0, (r1.output, r2.output, r3.output)
        heavy = sorted(m for m in ("torch", "tensorflow", "ray", "keras") if m in sys.modules)
        print(",".join(heavy) or "none")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "none"
