"""The simulator on small traces: exact figures by hand, the CLI's output, and bad input (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.scheduler.policies import Las
from orchestrator.simulate import load, run_policy, summarize
from tests.conftest import REPO

TRACE = """\
vc,submit_time,submit_s,duration,gpus,gpu_time
a,x,0,100,8,800
a,x,10,50,4,200
a,x,20,10,2,20
"""
VCS = "vc,nodes,gpus_per_node,contended_nodes\na,2,8,1\n"


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "t.csv").write_text(TRACE)
    (tmp_path / "vc.csv").write_text(VCS)
    return str(tmp_path / "t.csv"), str(tmp_path / "vc.csv")


def figures(files: tuple[str, str], policy: str | Las) -> dict[str, float]:
    partitions = load(*files, contended=True)
    replays, _ = run_policy(partitions, policy)
    report = summarize(getattr(policy, "name", str(policy)), replays, 0.0)
    return {k: round(v, 3) for k, v in report.to_json().items() if k != "replay_s"}


def test_fifo_by_hand(files: tuple[str, str]) -> None:
    # 8 GPUs. job-2 runs 0-100; job-3 (4 GPUs) and job-4 (2) wait for it, then run 100-150, 100-110.
    assert figures(files, "fifo") == {
        "jobs": 3,
        "avg_jct_s": 110.0,
        "p50_jct_s": 100.0,
        "p95_jct_s": 136.0,
        "p99_jct_s": 139.2,
        "avg_queue_s": round(170 / 3, 3),
        "makespan_s": 150.0,
        "utilization": 0.85,
        "preemptions": 0,
    }


def test_srtf_by_hand(files: tuple[str, str]) -> None:
    # At t=10 job-3 (50 s) preempts job-2 (90 s left), which owes 30 s of checkpoint for 8 GPUs;
    # job-4 fits beside job-3 at t=20. job-2 resumes at t=60 and ends at 60 + 90 + 30 = 180.
    got = figures(files, "srtf")
    assert (got["avg_jct_s"], got["avg_queue_s"], got["preemptions"]) == (80.0, round(50 / 3, 3), 1)
    assert got["makespan_s"] == 180.0


def test_las_with_a_low_threshold_preempts_like_srtf_here(files: tuple[str, str]) -> None:
    got = figures(files, Las(thresholds=(50.0,)))  # job-2 leaves band 0 after 50 GPU-s (t=6.25)
    assert (got["avg_jct_s"], got["preemptions"]) == (80.0, 1)
    assert figures(files, "las")["avg_jct_s"] == 110.0  # default thresholds: no preemption here


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["simulate", *args])
    return result.exit_code, result.output


def test_simulate_json_shape(files: tuple[str, str]) -> None:
    code, out = run_cli(
        "--trace", files[0], "--cluster", files[1], "--contended", "--policy", "fifo,srtf", "-q", "-o", "json"
    )
    assert code == 0, out
    data = json.loads(out.splitlines()[-1])
    assert list(data["policies"]) == ["fifo", "srtf"]
    fifo = data["policies"]["fifo"]
    assert {"avg_jct_s", "p99_jct_s", "avg_queue_s", "utilization", "preemptions"} <= set(fifo)
    assert (fifo["avg_jct_s"], fifo["utilization"], data["policies"]["srtf"]["preemptions"]) == (
        110.0,
        0.85,
        1,
    )


def test_simulate_text_table(files: tuple[str, str]) -> None:
    code, out = run_cli("--trace", files[0], "--cluster", files[1], "--contended", "-q")
    assert code == 0, out
    assert "adaptive" in out and "110 s" in out and "85.0%" in out


def test_explain_at_shows_the_queue_at_that_time(files: tuple[str, str]) -> None:
    at_30 = [
        "--trace",
        files[0],
        "--cluster",
        files[1],
        "--contended",
        "--policy",
        "fifo",
        "--explain-at",
        "30",
    ]
    code, out = run_cli(*at_30, "-o", "json")
    assert code == 0, out
    rows = {r["job_id"]: r for r in json.loads(out.splitlines()[-1])["partitions"]["a"]}
    assert rows["job-2"]["state"] == "running" and rows["job-2"]["since_s"] == 30
    assert rows["job-3"]["detail"] == "needs 4 nvidia-gpu as one gang; pool a has 0 free"
    assert (
        rows["job-4"]["detail"]
        == "blocked behind job-3 at the head of queue default (fifo does not backfill)"
    )
    code, out = run_cli(*at_30, "--job", "job-3")
    assert code == 0 and "  - pool a has 0 free" in out


def test_simulate_on_a_cluster_yaml(files: tuple[str, str]) -> None:
    code, out = run_cli(
        "--trace",
        files[0],
        "--cluster",
        str(REPO / "examples/clusters/gpu.yaml"),
        "--policy",
        "fifo",
        "-q",
        "-o",
        "json",
    )
    assert code == 0, out
    assert json.loads(out.splitlines()[-1])["policies"]["fifo"]["avg_jct_s"] == pytest.approx(
        (100 + 50 + 10) / 3
    )


def test_plot_writes_a_png(files: tuple[str, str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (pip install -e '.[test]')")
    png = tmp_path / "jct.png"
    code, out = run_cli(
        "--trace", files[0], "--cluster", files[1], "--policy", "fifo,las", "-q", "--plot", str(png)
    )
    assert code == 0, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


@pytest.mark.parametrize(
    ("trace", "vcs", "args", "needles"),
    [
        (
            "vc,submit_s,duration,gpus\na,0,10,x\n",
            VCS,
            [],
            ["t.csv:2: column gpus: 'x' is not a whole number"],
        ),
        (
            "vc,submit_s,duration,gpus\na,0,-5,1\n",
            VCS,
            [],
            ["t.csv:2: column duration: '-5' is not a number >= 0"],
        ),
        ("vc,submit_s,gpus\na,0,1\n", VCS, [], ["t.csv:1: missing column duration"]),
        ("vc,submit_s,duration,gpus\nzz,0,10,1\n", VCS, [], ["t.csv:2: vc 'zz' is not in", "vc.csv"]),
        (
            "vc,submit_s,duration,gpus\na,0,10,1\na,5,10,64\n",
            VCS,
            [],
            ["t.csv:3: the job asks for 64 GPUs; vc a has 16"],
        ),
        ("vc,submit_s,duration,gpus\na,0,10,1,9\n", VCS, [], ["t.csv:2: 5 fields, the header has 4"]),
        (TRACE, "vc,nodes,gpus_per_node\na,2,8\na,3,8\n", [], ["vc.csv:3: vc 'a' appears twice"]),
        (
            TRACE,
            "vc,nodes,gpus_per_node\na,two,8\n",
            [],
            ["vc.csv:2: column nodes: 'two' is not a whole number"],
        ),
        (TRACE, VCS, ["--contended"], []),
        (
            TRACE,
            "vc,nodes,gpus_per_node\na,2,8\n",
            ["--contended"],
            ["vc.csv:1: missing column contended_nodes"],
        ),
        (TRACE, VCS, ["--policy", "lifo"], ["unknown scheduling policy 'lifo'"]),
        (TRACE, VCS, ["--vc", "b"], ["no jobs for partition b"]),
        (TRACE, VCS, ["--explain-at", "soon"], ["--explain-at 'soon' is not a time"]),
    ],
)
def test_bad_input_exits_2_and_names_the_row(
    tmp_path: Path, trace: str, vcs: str, args: list[str], needles: list[str]
) -> None:
    (tmp_path / "t.csv").write_text(trace)
    (tmp_path / "vc.csv").write_text(vcs)
    code, out = run_cli(
        "--trace", str(tmp_path / "t.csv"), "--cluster", str(tmp_path / "vc.csv"), "-q", *args
    )
    if not needles:
        assert code == 0, out
        return
    assert code == 2, out
    for needle in needles:
        assert needle in out
    assert "Traceback" not in out


def test_bad_cluster_yaml_names_the_field(tmp_path: Path, files: tuple[str, str]) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text(
        textwrap.dedent("""\
        pools:
          - name: a100
            accelerator: nvidia-a100-40gb
            nodes: 2
            accelerators_per_node: 8
        queues:
          - name: team
            quotas:
              nvidia-h100-80gb: {nominal: 8}
        """)
    )
    code, out = run_cli("--trace", files[0], "--cluster", str(bad))
    assert code == 2
    assert "invalid cluster file" in out and "queues[0].quotas.nvidia-h100-80gb" in out
    assert "no pool has accelerator 'nvidia-h100-80gb'" in out


def test_no_heavy_framework_is_imported() -> None:
    """The scheduler and the simulator are pure Python: no Ray, torch, TensorFlow or Kubernetes."""
    code = textwrap.dedent(f"""
        import sys
        from orchestrator.scheduler import ClusterState, Scheduler, load_cluster
        from orchestrator.simulate import load, run_policy, summarize
        from orchestrator.cli import main
        from click.testing import CliRunner
        import pathlib, tempfile
        d = pathlib.Path(tempfile.mkdtemp())
        (d / "t.csv").write_text({TRACE!r})
        (d / "vc.csv").write_text({VCS!r})
        parts = load(str(d / "t.csv"), str(d / "vc.csv"), contended=True)
        print(summarize("las", run_policy(parts, "las")[0], 0).avg_jct_s)
        load_cluster({str(REPO / "examples/clusters/gpu.yaml")!r})
        r = CliRunner().invoke(main, ["simulate", "--trace", str(d / "t.csv"), "--cluster", str(d / "vc.csv"), "-q"])
        assert r.exit_code == 0, r.output
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "torch", "tensorflow", "kubernetes"))
        print(heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["110.0", "[]"]


TWO_VCS_TRACE = """\
vc,submit_time,submit_s,duration,gpus,gpu_time
a,x,0,100,8,800
b,x,5,40,4,160
a,x,10,50,4,200
b,x,12,400,8,3200
a,x,20,10,2,20
b,x,30,20,1,20
"""
TWO_VCS = "vc,nodes,gpus_per_node,contended_nodes\na,2,8,1\nb,1,8,1\n"


@pytest.mark.parametrize("policy", ["fifo", "srtf", "las"])
def test_partitions_replayed_in_worker_processes_match_one_process(tmp_path: Path, policy: str) -> None:
    (tmp_path / "t.csv").write_text(TWO_VCS_TRACE)
    (tmp_path / "vc.csv").write_text(TWO_VCS)
    partitions = load(str(tmp_path / "t.csv"), str(tmp_path / "vc.csv"), contended=True)
    assert [p.name for p in partitions] == ["a", "b"]
    progress: list[int] = []
    alone, _ = run_policy(partitions, policy)
    side_by_side, _ = run_policy(partitions, policy, processes=2, on_finished=progress.append)
    assert sum(progress) == 6  # every finished job reported back through the queue

    def history(replays: list) -> dict[str, tuple]:
        return {
            j.id: (r.partition.name, j.first_start, j.finished_at, j.preemptions, j.queued_total, j.attained)
            for r in replays
            for j in r.state.jobs.values()
        }

    assert history(side_by_side) == history(alone)
    assert [(r.partition.name, r.time, r.passes) for r in side_by_side] == [
        (r.partition.name, r.time, r.passes) for r in alone
    ]
    one = summarize(policy, alone, 0.0).to_json()
    two = summarize(policy, side_by_side, 0.0).to_json()
    assert one == two and one["jobs"] == 6
    for r in side_by_side:  # the rebuilt end state: nothing runs, all capacity is free again
        assert not r.state.running and not r.state.pending
        assert all(p.free_total == p.per_node * p.pool.nodes for p in r.state.capacity.pools.values())
        assert r.scheduler.clock.now() == r.time


def test_simulate_processes_option_gives_the_same_figures(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(TWO_VCS_TRACE)
    (tmp_path / "vc.csv").write_text(TWO_VCS)
    outputs = []
    for extra in ([], ["-j", "2"]):
        result = CliRunner().invoke(
            main,
            [
                "simulate",
                "--trace",
                str(tmp_path / "t.csv"),
                "--cluster",
                str(tmp_path / "vc.csv"),
                "--contended",
                "--policy",
                "fifo,sjf",
                "-q",
                "-o",
                "json",
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        for figures in data["policies"].values():
            figures.pop("replay_s")
        outputs.append(data)
    assert outputs[0] == outputs[1]
    assert outputs[0]["partitions"] == 2 and outputs[0]["jobs"] == 6
    bad = CliRunner().invoke(
        main,
        ["simulate", "--trace", str(tmp_path / "t.csv"), "--cluster", str(tmp_path / "vc.csv"), "-j", "0"],
    )
    assert bad.exit_code == 2 and "--processes" in bad.output


def test_compare_to_prints_ratios(files: tuple[str, str]) -> None:
    code, out = run_cli(
        "--trace", files[0], "--cluster", files[1], "--contended", "--policy", "fifo", "--compare-to", "srtf",
        "-q", "-o", "json",
    )  # fmt: skip
    assert code == 0, out
    data = json.loads(out)
    assert data["compare_to"] == "srtf" and list(data["policies"]) == ["fifo", "srtf"]
    fifo, srtf = data["policies"]["fifo"], data["policies"]["srtf"]
    # fifo: avg 110 s against srtf's 80; no preemptions against srtf's one in three jobs
    assert fifo["ratio_to_srtf"] == {
        "avg_jct": 1.375,
        "p95_jct": round(fifo["p95_jct_s"] / srtf["p95_jct_s"], 4),
        "preemptions_per_job": 0.0,
    }
    assert srtf["ratio_to_srtf"] == {"avg_jct": 1.0, "p95_jct": 1.0, "preemptions_per_job": 1.0}
    code, out = run_cli(
        "--trace", files[0], "--cluster", files[1], "--contended", "--policy", "fifo", "--compare-to", "srtf", "-q"
    )
    assert code == 0, out
    assert "ratios to srtf" in out
    assert [line.split()[2:6] for line in out.splitlines() if line.startswith("│ fifo")][-1] == [
        "│", "1.38x", "│", f"{fifo['p95_jct_s'] / srtf['p95_jct_s']:.2f}x",
    ]  # fmt: skip


GUARDED_TRACE = """\
vc,submit_time,submit_s,duration,gpus,gpu_time
a,x,0,100000,8,800000
a,x,3650,100,8,800
a,x,3800,100,8,800
"""


def test_explain_names_the_guard_that_holds_a_preemption_back(tmp_path: Path) -> None:
    # job-2 passes 8 GPU-hours (the prior's first band) at t=3600; job-3 preempts it at 3650 and
    # ends at 3750; job-2 restarts then, and its 10-minute quantum keeps job-4 from preempting it.
    (tmp_path / "t.csv").write_text(GUARDED_TRACE)
    (tmp_path / "vc.csv").write_text(VCS)
    code, out = run_cli(
        "--trace", str(tmp_path / "t.csv"), "--cluster", str(tmp_path / "vc.csv"), "--contended",
        "--explain-at", "3900", "--job", "job-4",
    )  # fmt: skip
    assert code == 0, out
    assert "guard min-quantum held back preempting 1 job of a worse band" in " ".join(out.split())
    code, out = run_cli(
        "--trace", str(tmp_path / "t.csv"), "--cluster", str(tmp_path / "vc.csv"), "--contended",
        "--explain-at", "4400", "--job", "job-4",
    )  # fmt: skip
    assert "is not waiting" in out or "running" in out  # the quantum ended at 4350: job-4 preempted it
