"""Bad input, class by class (issue 18 part 1): exit 2, a message naming the field or file, a fix.

Each class has several instances; every case goes through the real CLI (click's runner, in
process) and must end in exit 2 with `fix:` and no traceback or "internal error".
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.spec import load_spec
from orchestrator.spec.loader import MAX_DEPTH, MAX_SPEC_BYTES, parse_yaml_text
from orchestrator.spec.models import MAX_MEMORY_BYTES, parse_memory

HEAD = "name: j\nmodel: {type: cnn}\n"


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def refused(path: Path | str, *words: str, verb: tuple[str, ...] = ("validate",), extra: tuple[str, ...] = ()) -> str:
    """Run the CLI on ``path``; assert exit 2, a fix, no traceback, and every word in the output."""
    code, out = cli(*verb, str(path), *extra)
    assert code == 2, out
    assert "fix:" in out, out
    assert "Traceback" not in out and "internal error" not in out, out
    for word in words:
        assert word in out, f"{word!r} not in:\n{out}"
    return out


def spec_file(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- deep nesting ---------------------------------------------------------------------------------
DEEP = {
    "flow-lists": HEAD + "params: " + "[" * 1000 + "]" * 1000 + "\n",
    "flow-maps": HEAD + "params: " + "{a: " * 500 + "1" + "}" * 500 + "\n",
    "block-maps": HEAD + "params:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(300)),
    "block-lists": HEAD + "params:\n  x:\n" + "".join("  " * (i + 2) + "-\n" for i in range(300)),
    "unclosed": "[" * 5000,
    "top-level": "a:\n" + "".join(" " * (i + 1) + "b:\n" for i in range(200)),
}


@pytest.mark.parametrize("text", DEEP.values(), ids=DEEP.keys())
def test_deep_nesting_is_refused_while_composing(tmp_path: Path, text: str) -> None:
    out = refused(spec_file(tmp_path, text), f"nested more than {MAX_DEPTH} levels deep")
    assert "RecursionError" not in out


def test_nesting_up_to_the_limit_is_fine() -> None:
    text = "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert parse_yaml_text(text, "t").data["a"] is not None


def test_deep_override_value_and_path_are_refused(tmp_path: Path) -> None:
    path = spec_file(tmp_path, HEAD)
    refused(path, "nested more than", extra=("--set", "params.x=" + "[" * 2000))
    refused(path, "override path is at most", extra=("--set", "params." + ".".join(["a"] * 500) + "=1"))


def test_deep_sweep_spec_is_refused(tmp_path: Path) -> None:
    text = HEAD + "tune:\n  search_space: " + "{a: " * 300 + "1" + "}" * 300 + "\n"
    refused(spec_file(tmp_path, text), "nested more than", verb=("tune", "--dry-run"))


# -- not a regular file ---------------------------------------------------------------------------
def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO with no writer used to block the CLI forever; a subprocess with a deadline proves it does not."""
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "validate", str(fifo)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "named pipe (FIFO), not a regular file" in proc.stderr and "fix:" in proc.stderr


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_devices_are_refused_directly_and_through_a_symlink(tmp_path: Path, target: str) -> None:
    refused(target, "character device, not a regular file")
    link = tmp_path / "spec.yaml"
    link.symlink_to(target)
    refused(link, "character device")
    refused(link, "character device", verb=("submit", "--dry-run"))
    refused(link, "character device", verb=("tune", "--dry-run"))


def test_a_directory_and_a_missing_file(tmp_path: Path) -> None:
    refused(tmp_path, "is a directory")
    refused(tmp_path / "nope.yaml", "no such file")


def test_at_most_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_SPEC_BYTES + 10))
    refused(path, f"larger than {MAX_SPEC_BYTES} bytes")
    path.write_bytes(b"#" * (MAX_SPEC_BYTES - 10))  # at the cap: read, then found empty
    refused(path, "the file is empty")


# -- tags anywhere ---------------------------------------------------------------------------------
TAGGED = {
    "mapping": "name: j\nmodel: !!python/object:os.system {type: cnn}\n",
    "sequence": HEAD.replace("{type: cnn}", "{type: cnn, conv_filters: !!python/tuple [8]}"),
    "top-level-mapping": "!!python/object/new:dict\nname: j\nmodel: {type: cnn}\n",
    "key": HEAD + "!!python/name:os.system : 1\n",
    "scalar": "name: !!python/str j\nmodel: {type: cnn}\n",
    "local-tag": HEAD + "params: !mine {a: 1}\n",
    "set": HEAD + "params: !!set {a, b}\n",
    "omap": HEAD + "params: !!omap [{a: 1}]\n",
    "binary": HEAD + "params: {a: !!binary aGVsbG8=}\n",
    "merge-source": HEAD + "base: &b !!python/object:x {epochs: 1}\ntraining:\n  <<: *b\n",
}


@pytest.mark.parametrize("text", TAGGED.values(), ids=TAGGED.keys())
def test_every_non_core_tag_is_refused_wherever_it_stands(tmp_path: Path, text: str) -> None:
    refused(spec_file(tmp_path, text), "unsupported YAML tag")


def test_core_tags_and_merge_keys_still_work(tmp_path: Path) -> None:
    text = ("name: !!str j\nmodel: !!map {type: cnn, conv_filters: !!seq [8]}\nbase: &b {epochs: !!int 2}\n"
            "training:\n  <<: *b\n")
    data = parse_yaml_text(text, "t").data
    assert data["training"] == {"epochs": 2} and data["model"]["conv_filters"] == [8]


# -- lax coercion -----------------------------------------------------------------------------------
LAX = {
    "workers-yes": ("resources: {workers: yes}", ["resources.workers", "is a boolean"]),
    "workers-on": ("resources: {workers: on}", ["resources.workers", "is a boolean"]),
    "epochs-true": ("training: {epochs: true}", ["training.epochs", "is a boolean"]),
    "workers-quoted": ("resources: {workers: \"2\"}", ["resources.workers", "without quotes"]),
    "epochs-float": ("training: {epochs: 2.0}", ["training.epochs", "whole number"]),
    "pool-quoted-bool": ("model: {type: cnn, pool: \"true\"}", ["model.pool", "true or false"]),
    "pool-int": ("model: {type: cnn, pool: 1}", ["model.pool", "true or false"]),
    "name-no": ("name: no", ["name", "YAML reads yes, no"]),
    "lr-quoted": ("training: {learning_rate: \"0.1\"}", ["training.learning_rate", "without quotes"]),
    "lr-nan": ("training: {learning_rate: .nan}", ["training.learning_rate", "finite"]),
    "bucket-inf": ("sync: {bucket_mb: .inf}", ["sync.bucket_mb", "finite"]),
    "epochs-base60": ("training: {epochs: 1:30}", ["training.epochs", "base-60", "quote it"]),
    "seed-base60": ("training: {seed: 190:20:30}", ["training.seed", "base-60"]),
    "float-base60": ("training: {learning_rate: 1:30.5}", ["training.learning_rate", "base-60"]),
    "seed-octal": ("training: {seed: 010}", ["training.seed", "octal", "(10)"]),
}


@pytest.mark.parametrize("case", LAX.values(), ids=LAX.keys())
def test_lax_coercion_is_refused(tmp_path: Path, case: tuple[str, list[str]]) -> None:
    line, words = case
    key = line.split(":", 1)[0]
    base = "" if key in ("name", "model") else HEAD
    if key == "name":
        base = "model: {type: cnn}\n"
    elif key == "model":
        base = "name: j\n"
    refused(spec_file(tmp_path, base + line + "\n"), *words)


def test_lax_values_through_set_are_refused_too(tmp_path: Path) -> None:
    path = spec_file(tmp_path, HEAD)
    refused(path, "resources.workers", "is a boolean", extra=("--set", "resources.workers=yes"))
    refused(path, "training.epochs", "base-60", extra=("--set", "training.epochs=1:30"))


def test_what_should_still_be_accepted(tmp_path: Path) -> None:
    path = spec_file(tmp_path, HEAD + "training: {learning_rate: 1, epochs: 3, momentum: 1e-1, weight_decay: 1.0e-4}\n"
                                      "resources: {memory: 4Gi, cpus_per_worker: 1}\nparams: {t: '1:30', n: 010x}\n")
    spec = load_spec(path, ["training.seed=7"])
    assert spec.training.learning_rate == 1.0 and isinstance(spec.training.learning_rate, float)
    assert spec.training.momentum == 0.1 and spec.training.weight_decay == 1e-4
    assert spec.training.seed == 7 and spec.resources.memory_bytes == 4 * 1024**3
    assert spec.params == {"t": "1:30", "n": "010x"}
    assert load_spec(path, ["training.learning_rate=1e-3"]).training.learning_rate == 0.001


# -- sizes that overflow ----------------------------------------------------------------------------
SIZES = {
    "int-5000-digits": (HEAD + "training: {seed: " + "9" * 5000 + "}\n", ["training.seed", "an integer of 5000"]),
    "int-beyond-64-bits": (HEAD + "params: {a: 99999999999999999999}\n", ["params.a", "out of range"]),
    "binary-int": (HEAD + "params: {a: 0b" + "1" * 70 + "}\n", ["params.a", "out of range"]),
    "memory-400-nines": (HEAD + "resources: {memory: \"" + "9" * 400 + "Ti\"}\n", ["resources.memory"]),
    "memory-too-big": (HEAD + "resources: {memory: 2048Ti}\n", ["resources.memory", "more than 1Pi"]),
    "memory-int-too-big": (HEAD + "resources: {memory: 9000000000000000000}\n", ["resources.memory"]),
    "long-string": (HEAD + "params: {a: " + "x" * 20000 + "}\n", ["params.a", "20000 characters"]),
    "long-key": (HEAD + "k" * 500 + ": 1\n", ["a key of 500 characters"]),
    "long-layer": ("name: j\nmodel:\n  type: sequential\n  layers: [\"Dense(" + "(" * 3000 + ")\"]\n",
                   ["model.layers[0]", "characters (at most 500)"]),
    "nested-layer": ("name: j\nmodel:\n  type: sequential\n  layers: [\"Dense(" + "[" * 200 + "]" * 200 + ")\"]\n",
                     ["model.layers[0]"]),
    "huge-units": ("name: j\nmodel:\n  type: sequential\n  layers: [\"Dense(" + "9" * 300 + ", input_shape=(4,))\"]\n",
                   ["model.layers[0]", "positive integer (at most 65536)"]),
    "too-many-layers": ("name: j\nmodel:\n  type: sequential\n  layers: [" + ", ".join(["Flatten"] * 300) + "]\n",
                        ["model.layers"]),
}


@pytest.mark.parametrize("case", SIZES.values(), ids=SIZES.keys())
def test_sizes_are_bounded(tmp_path: Path, case: tuple[str, list[str]]) -> None:
    text, words = case
    refused(spec_file(tmp_path, text), *words)


SWEEP = HEAD + "tune:\n  search_space:\n"
SWEEPS = {
    "long-expression": (SWEEP + "    training.learning_rate: \"choice([" + "0.1, " * 1000 + "])\"\n",
                        ["tune.search_space", "characters (at most 4000)"]),
    "nested-expression": (SWEEP + "    params.a: \"choice(" + "[" * 300 + "]" * 300 + ")\"\n", ["tune.search_space"]),
    "huge-range": (SWEEP + "    params.a: \"randint(0, " + "9" * 40 + ")\"\n", ["a number beyond"]),
    "450M-trials": (HEAD + "tune:\n  search: grid\n  num_samples: 1\n  search_space:\n"
                    + "".join(f"    params.p{i}: \"grid({list(range(j))})\"\n" for i, j in enumerate([30, 30, 20, 25, 20, 50]))
                    + "", ["450,000,000 trials", "at most 10,000", "search: random"]),
    "trials-from-samples": (HEAD + "tune:\n  num_samples: 5000\n  search_space:\n    params.a: \"grid([1, 2, 3])\"\n",
                            ["15,000 trials"]),
}


@pytest.mark.parametrize("case", SWEEPS.values(), ids=SWEEPS.keys())
def test_sweep_sizes_are_bounded(tmp_path: Path, case: tuple[str, list[str]]) -> None:
    text, words = case
    refused(spec_file(tmp_path, text), *words, verb=("tune", "--dry-run"))


def test_choice_lists_and_expressions_are_bounded_in_the_parser() -> None:
    from orchestrator.sweep.space import MAX_CHOICES, ExpressionError, parse_expression

    with pytest.raises(ExpressionError, match="at most 4000"):
        parse_expression("choice([" + "1," * 2500 + "])")
    with pytest.raises(ExpressionError, match=f"at most {MAX_CHOICES}"):
        parse_expression("choice([" + "1," * 999 + "1, 2])")  # 1001 values, under 4000 characters
    assert len(parse_expression("grid([" + "1," * 999 + "1])").values) == MAX_CHOICES


def test_parse_memory_bounds() -> None:
    assert parse_memory("1Pi" if False else "1024Ti") == MAX_MEMORY_BYTES
    for bad in ("9" * 400 + "Ti", "1e9Gi", "-1Gi", "4 bananas", "4Gigantic"):
        with pytest.raises(ValueError):
            parse_memory(bad)


# -- messages ---------------------------------------------------------------------------------------
PASSWD = "".join(f"user{i}: x:{i}:{i}:secret-{i}:/home/u{i}:/bin/sh\n" for i in range(60))
SHADOW = "".join(f"user{i}:$6$salt$hash{i}:19000:0:99999:7:::\n" for i in range(30))


@pytest.mark.parametrize("text", [PASSWD, SHADOW, "[section]\nkey = value\n", "#!/bin/sh\nrm -rf /\n",
                                  "a: 1\nb: 2\nc: 3\nname: j\n"])
def test_a_file_that_is_no_spec_is_not_echoed(tmp_path: Path, text: str) -> None:
    out = refused(spec_file(tmp_path, text))
    assert "secret-" not in out and "hash1" not in out
    assert len(out) < 1500, out
    assert out.count("unknown field") <= 3


def test_the_passwd_like_file_is_named_as_such(tmp_path: Path) -> None:
    refused(spec_file(tmp_path, PASSWD), "does not look like a job spec", "60 of its 60")


def test_many_issues_are_capped(tmp_path: Path) -> None:
    text = HEAD + "training:\n" + "".join(f"  bad{i}: 1\n" for i in range(100))
    out = refused(spec_file(tmp_path, text), "... and 80 more")
    assert out.count("unknown field") == 20


BAD_TABLE = [
    ("validate", "name: j\n"),
    ("validate", "name: J!\nmodel: {type: cnn}\n"),
    ("validate", HEAD + "training: {optimizer: adamm}\n"),
    ("validate", HEAD + "data: {source: mnist}\n"),
    ("validate", HEAD + "data: {source: missing.npz}\n"),
    ("validate", HEAD + "resources: {accelerator: 'A100!'}\n"),
    ("validate", HEAD + "resources: {memory: 4 bananas}\n"),
    ("validate", HEAD + "resources: {queue: 'Not A Queue'}\n"),
    ("validate", HEAD + "testing: {inject: [{kind: sigkill}]}\n"),
    ("validate", "- a\n- b\n"),
    ("validate", "name: [\n"),
    ("validate", "\t\x01"),
    ("submit", HEAD + "training: {epochs: 0}\n"),
    ("submit", HEAD + "entrypoint: nothere.py:main\nmodel: null\n"),
    ("tune", HEAD),
    ("tune", HEAD + "tune: {search_space: {training.epochs: 'uniform(1, 3)'}}\n"),
    ("tune", HEAD + "tune: {search_space: {training.nope: 'choice([1])'}}\n"),
    ("tune", HEAD + "tune: {search_space: {training.learning_rate: 'exp(1)'}, metric: acc}\n"),
    ("tune", HEAD + "tune: {search_space: {a: 1}, num_samples: yes}\n"),
]


@pytest.mark.parametrize(("verb", "text"), BAD_TABLE)
def test_every_refusal_has_a_fix(tmp_path: Path, verb: str, text: str) -> None:
    args = ("tune", "--dry-run") if verb == "tune" else ("submit", "--dry-run") if verb == "submit" else (verb,)
    out = refused(spec_file(tmp_path, textwrap.dedent(text)), verb=args)
    issues = [line for line in out.splitlines() if line.startswith("  ") and not line.startswith("    ")]
    fixes = [line for line in out.splitlines() if line.strip().startswith("fix:")]
    assert issues and len(fixes) >= len(issues), out


def test_parse_errors_carry_no_file_contents_beyond_an_excerpt(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(spec_file(tmp_path, HEAD + "params: {a: " + "b" * 50000 + "}\n"))
    assert len(err.value.render()) < 600


# -- what submit refuses, validate refuses --------------------------------------------------------
@pytest.mark.parametrize("resources", [
    "{accelerator: nvidia-t4}",
    "{accelerator: nvidia-t4, gpus_per_worker: 0}",
    "{accelerators: [nvidia-h100-80gb, nvidia-a100-40gb]}",
    "{accelerator: tpu-v5p-slice, topology: 2x2x1, workers: 1}",
])
@pytest.mark.parametrize("verb", [("validate",), ("submit", "--dry-run")])
def test_an_accelerator_without_accelerators_per_worker_is_refused_at_the_edge(
        tmp_path: Path, resources: str, verb: tuple[str, ...]) -> None:
    """It used to pass `validate` and fail later, in the driver (the scheduler's request)."""
    out = refused(spec_file(tmp_path, HEAD + f"resources: {resources}\n"),
                  "resources.gpus_per_worker", "an accelerator type is set but no accelerators per worker",
                  "fix: set resources.gpus_per_worker", verb=verb)
    assert out.startswith("error: invalid job spec"), out


def test_an_accelerator_with_accelerators_per_worker_still_validates(tmp_path: Path) -> None:
    code, out = cli("validate", str(spec_file(tmp_path, HEAD + "resources: {accelerator: nvidia-t4, gpus_per_worker: 1}\n")))
    assert code == 0, out
    assert "accelerator: nvidia-t4" in out and "gpus_per_worker: 1" in out
