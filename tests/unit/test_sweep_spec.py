"""Sweep specs without Ray: the search-space parser, the `tune:` section, field paths against the
job spec, `orchestrator tune` errors (exit 2, field path and line), and the dry-run plans."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.errors import NotAvailableError, SpecError
from orchestrator.sweep.loader import apply_params, load_sweep_spec
from orchestrator.sweep.models import AshaScheduler, SweepSpec
from orchestrator.sweep.space import ExpressionError, grid_size, parse_expression, to_ray
from tests.conftest import REPO

SWEEP_FILE = REPO / "jobs" / "cnn-sweep.yaml"

BASE = """\
name: sweep-test
model: {type: cnn, conv_filters: [8], dense_units: [16]}
resources: {workers: 1, cpus_per_worker: 0.5}
training: {epochs: 3, batch_size: 32}
"""


def write(tmp_path: Path, tune: str, base: str = BASE) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(base + "tune:\n" + textwrap.indent(textwrap.dedent(tune), "  "))
    return path


# -- expressions -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "kind", "args"), [
    ("loguniform(1e-4, 1e-1)", "loguniform", (1e-4, 1e-1)),
    ("uniform(0.1, 0.5)", "uniform", (0.1, 0.5)),
    ("quniform(0, 1, 0.25)", "quniform", (0, 1, 0.25)),
    ("randint(1, 4)", "randint", (1, 4)),
    ("choice([32, 64, 128])", "choice", ([32, 64, 128],)),
    ("grid(['adam', 'sgd'])", "grid", (["adam", "sgd"],)),
    ("  choice([[16], [16, 32]])  ", "choice", ([[16], [16, 32]],)),
])
def test_expressions_parse_to_their_literal_arguments(text: str, kind: str, args: tuple[object, ...]) -> None:
    dim = parse_expression(text)
    assert (dim.kind, dim.args) == (kind, args)


@pytest.mark.parametrize(("text", "message", "fix"), [
    ("loguniformm(1e-4, 1e-1)", "unknown sampler 'loguniformm'", "did you mean `loguniform`?"),
    ("__import__('os').system('touch /tmp/pwned')", "is not a sampler call", "loguniform(1e-4, 1e-1)"),
    ("uniform(low, high)", "must be literal", "uniform(low, high)"),
    ("uniform(0.5, 0.1)", "low (0.5) must be below high (0.1)", "uniform(low, high)"),
    ("loguniform(0, 0.1)", "a log scale needs low > 0", "loguniform(1e-4, 0.1)"),
    ("randint(1.5, 4)", "takes whole numbers", "randint(low, high)"),
    ("choice([])", "one non-empty list", "choice([a, b, c])"),
    ("uniform(0.1, 0.5, 3)", "takes 2 numbers", "uniform(low, high)"),
    ("choice(values=[1, 2])", "positional arguments only", "choice([a, b, c])"),
    ("uniform(0.1,", "cannot read", "loguniform"),
])
def test_bad_expressions_say_what_is_wrong_and_how_to_write_them(text: str, message: str, fix: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression(text)
    assert message in info.value.message
    assert fix in info.value.fix


def test_grid_size_multiplies_grid_dimensions_and_choice_only_under_search_grid() -> None:
    dims = {"a": parse_expression("grid([1, 2, 3])"), "b": parse_expression("choice([1, 2])"),
            "c": parse_expression("uniform(0, 1)")}
    assert grid_size(dims) == 3
    assert grid_size(dims, grid_all=True) == 6


# -- the example sweep ------------------------------------------------------------------------------------
def test_the_example_sweep_loads_with_its_asha_settings() -> None:
    sweep = load_sweep_spec(SWEEP_FILE)
    assert isinstance(sweep, SweepSpec)
    assert sweep.job.name == "cnn-sweep" and sweep.job.training.epochs == 4
    assert sweep.tune.search_space == {"training.learning_rate": "loguniform(1e-4, 1e-1)"}
    assert sweep.tune.total_trials == 6 and sweep.tune.max_concurrent == 2
    assert sweep.tune.scheduler == AshaScheduler(grace_period=1, reduction_factor=2.0)
    assert sweep.max_epochs() == 4
    # the stored form round-trips
    assert SweepSpec.from_record_spec(sweep.to_record_spec()) == sweep


def test_a_trials_params_set_the_job_fields_they_name() -> None:
    sweep = load_sweep_spec(SWEEP_FILE)
    trial = apply_params(sweep.job, {"training.learning_rate": 0.0123, "model.dropout": 0.3})
    assert trial.training.learning_rate == 0.0123
    assert trial.model is not None and trial.model.dropout == 0.3
    assert trial.training.epochs == sweep.job.training.epochs  # the rest is the base job


def test_grid_search_counts_every_combination(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        search_space:
          training.learning_rate: grid([0.001, 0.01])
          training.batch_size: choice([16, 32, 64])
        search: grid
        num_samples: 2
        scheduler: {type: fifo}
    """)
    assert load_sweep_spec(path).tune.total_trials == 2 * 2 * 3


# -- errors: exit 2, the field path, the line --------------------------------------------------------------
def run_tune(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["tune", *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.mark.parametrize(("tune", "path", "line", "words"), [
    ("search_space:\n  training.learning_rate: loguniform(0, 0.1)\n",
     "tune.search_space.training.learning_rate", 7, ["log scale needs low > 0"]),
    ("search_space:\n  training.learnin_rate: loguniform(1e-4, 0.1)\n",
     "tune.search_space.training.learnin_rate", 7, ["training has no field 'learnin_rate'",
                                                    "did you mean `training.learning_rate`?"]),
    ("search_space:\n  training.batch_size: uniform(8, 64)\n",
     "tune.search_space.training.batch_size", 7, ["can draw 8.0", "randint(low, high) or choice"]),
    ("search_space:\n  model.dropout: uniform(0.1, 1.5)\n",
     "tune.search_space.model.dropout", 7, ["can draw 1.5", "model.dropout refuses"]),
    ("search_space:\n  training: choice([1, 2])\n",
     "tune.search_space.training", 7, ["is a whole section"]),
    ("search_space:\n  training.epochs: randint(2, 5)\nnum_sample: 3\n",
     "tune.num_sample", 8, ["unknown field", "did you mean `num_samples`?"]),
    ("search_space:\n  training.epochs: randint(2, 5)\nscheduler: {type: hyperband}\n",
     "tune.scheduler", 8, ["unknown scheduler type", "asha, pbt or fifo"]),
    ("search_space:\n  training.learning_rate: uniform(0.001, 0.1)\nsearch: grid\n",
     "tune.search_space.training.learning_rate", 7, ["search: grid needs listed values"]),
    ("search_space:\n  training.epochs: randint(2, 5)\nmetric: accuracy\n",
     "tune.metric", 8, ["unknown metric", "val_accuracy"]),
])
def test_bad_sweep_specs_exit_2_with_the_field_path_and_line(tmp_path: Path, tune: str, path: str, line: int,
                                                               words: list[str]) -> None:
    spec = write(tmp_path, tune)
    code, text = run_tune(str(spec), "--dry-run")
    assert code == 2, text
    assert f"{spec}:{line}: {path}:" in text, text
    for word in words:
        assert word in text, text
    assert "Traceback" not in text


def test_bad_sweep_spec_in_json_names_the_field_path(tmp_path: Path) -> None:
    spec = write(tmp_path, "search_space:\n  training.learning_rate: normal(0, 1)\n")
    result = CliRunner().invoke(main, ["tune", str(spec), "--output", "json"])
    assert result.exit_code == 2
    report = json.loads(result.stdout.strip().splitlines()[-1])
    issue = report["error"]["issues"][0]
    assert issue["field_path"] == "tune.search_space.training.learning_rate" and issue["line"] == 7
    assert "unknown sampler 'normal'" in issue["message"]


def test_a_job_spec_without_tune_is_refused_with_a_pointer_to_submit(tmp_path: Path) -> None:
    code, text = run_tune(str(REPO / "jobs" / "cnn.yaml"))
    assert code == 2
    assert "tune: a sweep spec needs a `tune:` section" in text and "orchestrator submit" in text


def test_optuna_search_without_optuna_is_exit_2_with_the_install_command(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    spec = write(tmp_path, "search_space:\n  training.learning_rate: loguniform(1e-4, 0.1)\nsearch: optuna\n")
    with pytest.raises(NotAvailableError) as info:
        load_sweep_spec(spec)
    assert info.value.exit_code == 2 and "pip install optuna" in (info.value.fix or "")


def test_job_field_errors_keep_the_job_loaders_messages(tmp_path: Path) -> None:
    spec = write(tmp_path, "search_space:\n  training.learning_rate: loguniform(1e-4, 0.1)\n",
                 base=BASE.replace("epochs: 3", "epochs: 0"))
    with pytest.raises(SpecError) as info:
        load_sweep_spec(spec)
    assert info.value.issues[0].field_path == "training.epochs" and info.value.issues[0].line == 4


# -- dry runs ------------------------------------------------------------------------------------------------
def test_dry_run_plan_counts_trials_and_the_full_budget() -> None:
    result = CliRunner().invoke(main, ["tune", str(SWEEP_FILE), "--dry-run", "-o", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout.strip().splitlines()[-1])
    assert plan["trials"] == 6 and plan["full_budget_trial_epochs"] == 24
    assert plan["scheduler"] == {"type": "asha", "grace_period": 1, "reduction_factor": 2.0, "brackets": 1,
                                 "max_t": 4, "time_attr": "epoch"}
    assert plan["trial"]["resources_per_worker"] == {"CPU": 0.5} and plan["trial"]["trial_process_cpus"] == 0.1


def test_validating_and_planning_a_sweep_imports_neither_ray_nor_torch() -> None:
    code = (
        "import sys\n"
        "from orchestrator.cli import main\n"
        f"try:\n    main(['tune', {str(SWEEP_FILE)!r}, '--dry-run', '-o', 'json'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('ray', 'torch', 'tensorflow') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_backend_ray_needs_the_clusters_gcs_address(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RAY_ADDRESS", "ORCHESTRATOR_RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(main, ["tune", str(SWEEP_FILE), "--backend", "ray"])
    assert result.exit_code == 2
    assert "needs the cluster's GCS address" in result.output and "--ray-address HEAD_IP:6379" in result.output
    # --ray-address is the GCS address only; the Jobs API URL goes to --address
    result = CliRunner().invoke(main, ["tune", str(SWEEP_FILE), "--backend", "ray", "--ray-address", "http://head:8265"])
    assert result.exit_code == 2
    assert "--ray-address http://head:8265 is not a GCS address" in result.output


def test_backend_ray_asks_the_cluster_of_address_for_its_gcs_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.backends.ray_cluster import RayClusterBackend
    from orchestrator.cli.tune_cmds import sweep_gcs_address
    from orchestrator.settings import Settings

    asked: list[str] = []

    def gcs(self: RayClusterBackend) -> str:
        asked.append(self.address)
        return "10.0.0.5:6379"

    monkeypatch.setattr(RayClusterBackend, "gcs_address", gcs)
    settings = Settings.from_env({"ORCHESTRATOR_HOME": "/nonexistent", "RAY_ADDRESS": "10.9.9.9:6379"})
    assert sweep_gcs_address(settings, None, "http://head:8265", dry_run=False) == "10.0.0.5:6379"
    assert asked == ["http://head:8265"]
    # --ray-address wins; without either option, RAY_ADDRESS; ORCHESTRATOR_RAY_ADDRESS is the Jobs API URL
    assert sweep_gcs_address(settings, "10.1.1.1:6379", "http://head:8265", dry_run=False) == "10.1.1.1:6379"
    assert sweep_gcs_address(settings, None, None, dry_run=False) == "10.9.9.9:6379"
    via_env = Settings.from_env({"ORCHESTRATOR_HOME": "/nonexistent", "ORCHESTRATOR_RAY_ADDRESS": "http://h2:8265"})
    assert sweep_gcs_address(via_env, None, None, dry_run=False) == "10.0.0.5:6379" and asked[-1] == "http://h2:8265"


def test_a_scheme_less_address_keeps_its_old_tune_meaning_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli.tune_cmds import sweep_gcs_address
    from orchestrator.settings import Settings

    settings = Settings.from_env({"ORCHESTRATOR_HOME": "/nonexistent"})
    assert sweep_gcs_address(settings, None, "head:6379", dry_run=False) == "head:6379"
    assert "use --ray-address head:6379" in capsys.readouterr().err


def test_submitting_a_sweep_spec_points_at_orchestrator_tune() -> None:
    result = CliRunner().invoke(main, ["submit", str(SWEEP_FILE), "--dry-run"])
    assert result.exit_code == 2
    assert "tune: unknown field" in result.output and "run it with `orchestrator tune SPEC`" in result.output


def test_pbt_values_are_clipped_into_their_range() -> None:
    assert parse_expression("uniform(0.85, 0.95)").clip(1.14) == 0.95
    assert parse_expression("loguniform(1e-4, 1e-1)").clip(5e-5) == 1e-4
    assert parse_expression("randint(1, 4)").clip(4.8) == 3 and parse_expression("randint(1, 4)").clip(0.2) == 1
    assert parse_expression("choice([1, 2])").clip(7) == 7  # listed values are never perturbed out of range


def test_trials_train_at_most_asha_max_t_epochs(tmp_path: Path) -> None:
    from orchestrator.sweep.runner import trial_job

    sweep = load_sweep_spec(write(tmp_path, """\
        search_space:
          training.learning_rate: loguniform(1e-4, 1e-1)
        scheduler: {type: asha, max_t: 2}
        """))
    assert sweep.job.training.epochs == 3 and sweep.max_epochs() == 2
    assert trial_job(sweep).training.epochs == 2  # a trial at max_t is finished, not interrupted


@pytest.mark.parametrize(("base", "fix"), [
    (BASE.replace("model: {type: cnn, conv_filters: [8], dense_units: [16]}",
                  "model: {type: gan}\ndata: {preprocessing: normalize}"), "metric: generator_loss"),
    (BASE.replace("model: {type: cnn, conv_filters: [8], dense_units: [16]}",
                  "model: {type: rnn}\ndata: {source: sine}"), "metric: val_loss"),
])
def test_an_accuracy_metric_for_a_job_without_accuracy_is_refused(tmp_path: Path, base: str, fix: str) -> None:
    spec = write(tmp_path, "search_space:\n  training.learning_rate: loguniform(1e-4, 1e-1)\n", base=base)
    code, text = run_tune(str(spec), "--dry-run")
    assert code == 2 and "tune.metric" in text and "never reported" in text and fix in text, text


def test_resume_of_a_sweep_refuses_detach_and_epochs(tmp_path: Path) -> None:
    import time

    from orchestrator.store import JobRecord, JobState, JobStore

    sweep = load_sweep_spec(SWEEP_FILE)
    store = JobStore(tmp_path / "jobs.db")
    store.create(JobRecord(id="sweep-1", name="cnn-sweep", spec=sweep.to_record_spec(), backend="local",
                           state=JobState.CANCELLED, job_dir=tmp_path / "jobs" / "sweep-1", created_at=time.time()))
    for flag in (["--detach"], ["--epochs", "9"]):
        result = CliRunner().invoke(main, ["resume", "sweep-1", *flag], env={"ORCHESTRATOR_HOME": str(tmp_path)})
        assert result.exit_code == 2 and "does not apply to a sweep" in result.output, result.output


def test_resume_of_a_ray_backend_sweep_joins_its_cluster_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import orchestrator.sweep.runner as runner
    from orchestrator.store import JobRecord, JobState, JobStore

    sweep = load_sweep_spec(SWEEP_FILE)
    store = JobStore(tmp_path / "jobs.db")
    store.create(JobRecord(id="sweep-2", name="cnn-sweep", spec=sweep.to_record_spec(), backend="local",
                           state=JobState.CANCELLED, job_dir=tmp_path / "jobs" / "sweep-2", created_at=time.time(),
                           result={"kind": "sweep", "ray_address": "10.0.0.5:6379"}))
    seen = {}

    class FakeDriver:
        def __init__(self, settings: object, sweep_id: str, ui: object) -> None:
            seen["address"] = settings.local_ray_address  # type: ignore[attr-defined]

        def run(self, resume: bool = False) -> JobRecord:
            seen["resume"] = resume
            return store.get("sweep-2")

    monkeypatch.setattr(runner, "SweepDriver", FakeDriver)
    CliRunner().invoke(main, ["resume", "sweep-2", "-q"], env={"ORCHESTRATOR_HOME": str(tmp_path), "RAY_ADDRESS": ""})
    assert seen == {"address": "10.0.0.5:6379", "resume": True}


def test_a_quantised_range_of_whole_numbers_draws_integers_for_an_integer_field(tmp_path: Path) -> None:
    """quniform(16, 64, 16) on training.batch_size: Ray's quniform draws 32.0, which the strict
    integer field refuses; the dimension runs as qrandint (high inclusive, like quniform)."""
    path = write(tmp_path, """\
        search_space:
          training.batch_size: quniform(16, 64, 16)
          training.epochs: qloguniform(1, 4, 1)
        num_samples: 2
    """)
    dims = load_sweep_spec(path).tune.dimensions
    batch, epochs = dims["training.batch_size"], dims["training.epochs"]
    assert batch.draws_whole_numbers and batch.samples_for_validation() == [16, 64]
    assert batch.clip(70.2) == 64 and isinstance(batch.clip(70.2), int)
    draws = {to_ray(batch).sample() for _ in range(300)}
    assert draws == {16, 32, 48, 64}
    assert {to_ray(epochs).sample() for _ in range(400)} == {1, 2, 3, 4}  # q=1: Ray's high is exclusive
    fractional = parse_expression("quniform(0.1, 0.5, 0.1)")
    assert not fractional.draws_whole_numbers and isinstance(to_ray(fractional).sample(), float)
