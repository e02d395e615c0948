"""Property-based tests (hypothesis): every input gets exit 0 with a valid spec or exit 2 with a fix.

Generated inputs go through the real CLI in process (click's runner on ``orchestrator.cli.main``):
``validate``, ``submit --dry-run`` and ``tune --dry-run``. For every one of them:

* the exit code is 0 (and the spec is valid) or 2 (and the output has ``fix:``);
* no traceback and no "internal error";
* nothing is written outside the job store: the temp directory and ORCHESTRATOR_HOME are the same
  before and after (a dry run does not even create the store);
* bounded time: hypothesis' ``deadline`` per example; a FIFO and /dev/zero run in a subprocess
  with a deadline and a memory cap (a regression fails the test instead of hanging it).

Strategies: YAML trees (nested mappings and lists of random keys and scalars, dumped as block or
flow YAML), mutations of a valid spec (a random field set to a random value, also through
``--set``), raw text (random YAML-ish characters), numbers and strings at every field, and file
kinds (directory, FIFO, symlink to /dev/zero, empty, binary, over the size cap). Derandomized, so
CI runs the same examples every time. ``EXAMPLES`` below says how many run in total.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.spec.loader import MAX_SPEC_BYTES, dump_yaml, parse_yaml_text

SETTINGS = settings(
    derandomize=True,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

#: Examples per property (the total is printed by test_the_fuzz_budget_is_recorded).
EXAMPLES = {
    "yaml_trees": 300,
    "mutations": 500,
    "overrides": 200,
    "raw_text": 300,
    "sweeps": 250,
    "file_kinds": 27,  # every kind with every verb
    "round_trip": 300,
}

VALID = {
    "name": "fuzz-job",
    "model": {"type": "cnn", "conv_filters": [8, 16], "dense_units": [32]},
    "data": {"source": "digits", "validation_fraction": 0.15},
    "resources": {"workers": 2, "cpus_per_worker": 0.5, "memory": "1Gi"},
    "training": {"epochs": 2, "batch_size": 32, "learning_rate": 0.01, "optimizer": "sgd"},
    "checkpoint": {"every_epochs": 1, "keep": 2},
    "failure": {"max_failures": 1, "hang_timeout_s": 60},
    "sync": {"backend": "auto", "bucket_mb": 25},
}
TUNE = {"search_space": {"training.learning_rate": "loguniform(1e-4, 1e-1)", "training.batch_size": "choice([16, 32])"},
        "num_samples": 2, "max_concurrent": 1}

# -- strategies ----------------------------------------------------------------------------------------
FIELD_NAMES = ["name", "model", "type", "cnn", "rnn", "gan", "sequential", "layers", "data", "source", "resources",
               "workers", "memory", "training", "epochs", "batch_size", "learning_rate", "seed", "tune",
               "search_space", "num_samples", "params", "<<", "entrypoint", "sync", "backend", "checkpoint"]
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(min_size=0, max_size=12))
edge_numbers = st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, 0.5, -0.0, 1e308, 1e-320,
                                float("inf"), float("-inf"), float("nan")])
numbers = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), edge_numbers,
                    st.integers(min_value=-(10**200), max_value=10**200))
yaml_words = st.sampled_from(["yes", "no", "on", "off", "~", "null", "true", "1:30", "190:20:30", "010", "0x1F",
                              "0b101", "1e-3", "1e400", ".inf", ".nan", "2001-12-14", "4Gi", "99999999Ti",
                              "Dense(64)", "uniform(1, 2)", "grid([1, 2])", "choice([])", "*a", "&a", "!!python/none",
                              "!!binary", "'", '"', "- ", ": ", "{", "[", "%", "@", "`", "\t", "digits", "sine",
                              "x.npz", "/dev/zero", "cnn", "rnn", "gan", "sequential"])
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30), yaml_words,
                    st.text(alphabet=st.characters(codec="utf-8"), max_size=8))
trees = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)


def _dump(value: Any, flow: bool) -> str:
    try:
        return yaml.safe_dump(value, default_flow_style=flow, allow_unicode=True)
    except (yaml.YAMLError, ValueError, RecursionError):
        return repr(value)


# -- the contract ----------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            out[str(path)] = 0 if path.is_dir() or not path.is_file() else path.stat().st_size
    return out


def check_contract(args: list[str], root: Path) -> tuple[int, str]:
    """Run the CLI; assert exit 0 (valid) or 2 (with a fix), no traceback, nothing written."""
    before = snapshot(root)
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    out = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception), out)
    assert result.exit_code in (0, 2), (args, result.exit_code, out)
    assert "Traceback" not in out and "internal error" not in out, (args, out)
    if result.exit_code == 2:
        assert "fix:" in out, (args, out)
    assert snapshot(root) == before, f"{args} wrote files"
    return result.exit_code, out


VERBS: list[Callable[[str], list[str]]] = [
    lambda p: ["validate", p],
    lambda p: ["submit", "--dry-run", p],
    lambda p: ["tune", "--dry-run", p],
]


@pytest.fixture
def workdir(tmp_path: Path, home: Path) -> Path:
    """A temp dir holding the spec files and (would-be) ORCHESTRATOR_HOME, snapshotted around each call."""
    return tmp_path


COUNTS: dict[str, int] = dict.fromkeys(EXAMPLES, 0)


def _write(workdir: Path, text: str | bytes) -> str:
    path = workdir / "spec.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return str(path)


# -- properties ------------------------------------------------------------------------------------------
@settings(SETTINGS, max_examples=EXAMPLES["yaml_trees"])
@given(tree=trees, flow=st.booleans(), verb=st.sampled_from(range(3)))
def test_random_yaml_trees(workdir: Path, tree: Any, flow: bool, verb: int) -> None:
    COUNTS["yaml_trees"] += 1
    path = _write(workdir, _dump(tree, flow))
    check_contract(VERBS[verb](path), workdir)


def _paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    return out


SPEC_PATHS = _paths(VALID)


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = dict(data)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = _set(dict(out.get(path[0]) or {}), path[1:], value)
    return out


@settings(SETTINGS, max_examples=EXAMPLES["mutations"])
@given(path=st.sampled_from(SPEC_PATHS), value=trees, extra_key=st.one_of(st.none(), keys),
       sweep=st.booleans(), verb=st.sampled_from(range(2)))
def test_mutations_of_a_valid_spec(workdir: Path, path: tuple[str, ...], value: Any, extra_key: str | None,
                                   sweep: bool, verb: int) -> None:
    COUNTS["mutations"] += 1
    data = _set(VALID, path, value)
    if extra_key is not None:
        data = _set(data, path[:-1] + (extra_key,), value) if len(path) > 1 else {**data, extra_key: value}
    if sweep:
        data = {**data, "tune": TUNE}
    spec = _write(workdir, _dump(data, False))
    code, out = check_contract((VERBS[2] if sweep else VERBS[verb])(spec), workdir)
    if code == 0 and verb == 0 and not sweep:
        assert out.startswith(f"{spec}: valid")


@settings(SETTINGS, max_examples=EXAMPLES["overrides"])
@given(path=st.one_of(st.sampled_from([".".join(p) for p in SPEC_PATHS]), st.text(max_size=40)),
       value=st.one_of(yaml_words, st.text(max_size=40), numbers.map(str)), verb=st.sampled_from(range(2)))
def test_overrides(workdir: Path, path: str, value: str, verb: int) -> None:
    COUNTS["overrides"] += 1
    spec = _write(workdir, _dump(VALID, False))
    check_contract([*VERBS[verb](spec), "--set", f"{path}={value}"], workdir)


@settings(SETTINGS, max_examples=EXAMPLES["raw_text"])
@given(text=st.one_of(
    st.text(alphabet=st.sampled_from(list("[]{}:-,&*!|>'\"%@`#?\n\t abc019.")), max_size=300),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.builds(lambda n, s: s * n, st.integers(1, 2000), st.sampled_from(["[", "{a: ", "- ", "  a:\n", "&a [*a, ", "!!map "])),
), verb=st.sampled_from(range(3)))
def test_raw_text(workdir: Path, text: str | bytes, verb: int) -> None:
    COUNTS["raw_text"] += 1
    check_contract(VERBS[verb](_write(workdir, text)), workdir)


expressions = st.one_of(
    st.builds(lambda k, a, b: f"{k}({a}, {b})", st.sampled_from(["uniform", "loguniform", "randint", "lograndint",
                                                                    "quniform", "nope"]), numbers, numbers),
    st.builds(lambda k, v: f"{k}({v!r})", st.sampled_from(["choice", "grid"]),
              st.lists(st.one_of(numbers, st.text(max_size=5)), max_size=40)),
    st.text(max_size=60), yaml_words,
)


@settings(SETTINGS, max_examples=EXAMPLES["sweeps"])
@given(space=st.dictionaries(st.one_of(st.sampled_from([".".join(p) for p in SPEC_PATHS] + ["params.x"]), keys),
                             st.one_of(expressions, trees), min_size=0, max_size=6),
       num_samples=st.one_of(st.integers(-5, 20000), numbers, yaml_words),
       search=st.sampled_from(["random", "grid", "optuna", "bogus"]))
def test_random_sweeps(workdir: Path, space: dict[str, Any], num_samples: Any, search: str) -> None:
    COUNTS["sweeps"] += 1
    data = {**VALID, "tune": {"search_space": space, "num_samples": num_samples, "search": search}}
    check_contract(VERBS[2](_write(workdir, _dump(data, False))), workdir)


def _make_kind(workdir: Path, kind: str) -> str:
    path = workdir / "spec.yaml"
    if kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "dangling":
        path.symlink_to(workdir / "nowhere")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "huge":
        path.write_bytes(b"a: " + b"x" * (MAX_SPEC_BYTES + 1))
    elif kind == "unreadable":
        path.write_text(_dump(VALID, False))
        path.chmod(0)
    elif kind == "valid":
        path.write_text(_dump(VALID, False))
    return str(path)


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 * 1024**3, 4 * 1024**3))


def _in_subprocess(args: list[str], root: Path) -> tuple[int, str]:
    """The contract for a file that could block (FIFO) or never end (/dev/zero): a real process with a
    deadline and a memory cap, so a regression fails this test instead of hanging or swapping the machine."""
    before = snapshot(root)
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          timeout=60, preexec_fn=_limit_memory)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "fix:" in out, (args, proc.returncode, out)
    assert "Traceback" not in out and "internal error" not in out, out
    assert snapshot(root) == before
    return proc.returncode, out


FILE_KINDS = ["dir", "fifo", "dev-zero", "dangling", "empty", "binary", "huge", "unreadable", "valid"]


@settings(SETTINGS, max_examples=EXAMPLES["file_kinds"])
@given(kind=st.sampled_from(FILE_KINDS), verb=st.sampled_from(range(3)))
def test_file_kinds(tmp_path_factory: pytest.TempPathFactory, home: Path, kind: str, verb: int) -> None:
    """Every file kind gets the contract; a FIFO must not block (the hypothesis deadline bounds it)."""
    COUNTS["file_kinds"] += 1
    workdir = tmp_path_factory.mktemp("kind")
    path = _make_kind(workdir, kind)
    try:
        if kind in ("fifo", "dev-zero"):
            code, out = _in_subprocess(VERBS[verb](path), workdir)
        else:
            code, out = check_contract(VERBS[verb](path), workdir)
        if kind == "valid":
            assert code == (2 if verb == 2 else 0), out  # a job spec without `tune:` is no sweep
        elif kind != "unreadable" or os.geteuid() != 0:  # root reads a 000 file
            assert code == 2 and "fix:" in out
    finally:
        if kind == "unreadable":
            Path(path).chmod(0o600)


_SCALARS = st.one_of(
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20),  # control characters are refused
    st.from_regex(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?", fullmatch=True),
    st.from_regex(r"[0-9]{1,3}(:[0-5][0-9]){1,2}", fullmatch=True),
    st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)


@settings(SETTINGS, max_examples=EXAMPLES["round_trip"])
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True), _SCALARS, max_size=6))
def test_what_orchestrator_writes_as_yaml_reads_back_the_same(params: dict[str, Any]) -> None:
    """spec.yaml, ConfigMaps and best specs are written with dump_yaml: strings such as '1e3' or
    '1:30' stay strings, numbers stay numbers, through the same loader that reads specs."""
    COUNTS["round_trip"] += 1
    data = {"name": "1e3", "model": {"type": "cnn"}, "params": params}
    assert parse_yaml_text(dump_yaml(data), "round-trip").data == data



def test_the_fuzz_budget_is_recorded() -> None:
    """Runs last in this file: prints how many generated inputs ran (see the module docstring)."""
    total = sum(COUNTS.values())
    print(f"\nfuzz examples run: {total} ({', '.join(f'{k} {v}' for k, v in COUNTS.items())})")
    if all(COUNTS.values()):  # the whole file ran (not a -k selection)
        assert total >= sum(EXAMPLES.values()) * 0.9
