"""Two operator replicas and a coordination.k8s.io Lease: one leads, the standby takes over when the
leader stops renewing, and no TrainingJob ever gets a second RayJob."""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
import time
import urllib.request
from typing import Any

import pytest

from orchestrator.backends.k8s import JOB_LABEL
from orchestrator.operator.leader import ElectionConfig, LeaderElector, LeadershipLost, run_elected
from orchestrator.testing import builders as b
from tests.k8s.conftest import wait_for
from tests.k8s.test_operator import add_pools, free_port, phase_is, rayjobs

pytestmark = pytest.mark.k8s


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def election(namespace: str, identity: str, **timing: float) -> ElectionConfig:
    return ElectionConfig(namespace=namespace, name="orchestrator-operator", identity=identity, **timing)


def probe(url: str) -> Any:
    """(status, JSON body) of GET url, or None while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except OSError:
        return None


def holder(api: Any, namespace: str) -> str | None:
    lease = api.get_lease(namespace, "orchestrator-operator") or {}
    return (lease.get("spec") or {}).get("holderIdentity")


def test_one_candidate_wins_the_lease_and_another_takes_it_only_once_it_expires(api: Any, namespace: str) -> None:
    clock = Clock()
    a = LeaderElector(api, election(namespace, "op-a"), clock=clock)
    b_ = LeaderElector(api, election(namespace, "op-b"), clock=clock)
    assert a.try_acquire_or_renew() is True  # creates the Lease
    assert b_.try_acquire_or_renew() is False
    lease = api.get_lease(namespace, "orchestrator-operator")
    assert lease["spec"]["holderIdentity"] == "op-a" and lease["spec"]["leaseDurationSeconds"] == 15
    assert datetime.datetime.fromisoformat(lease["spec"]["renewTime"]).utcoffset() == datetime.timedelta(0)
    assert lease["spec"]["leaseTransitions"] == 0

    clock.now += 14  # a renews in time: b keeps waiting, judged from when b saw the Lease change
    assert a.try_acquire_or_renew() is True
    assert b_.try_acquire_or_renew() is False
    clock.now += 14
    assert b_.try_acquire_or_renew() is False  # 14 s since b saw a's renewal: not expired yet
    clock.now += 2  # a stopped renewing 16 s ago
    assert b_.try_acquire_or_renew() is True
    lease = api.get_lease(namespace, "orchestrator-operator")
    assert lease["spec"]["holderIdentity"] == "op-b" and lease["spec"]["leaseTransitions"] == 1
    assert a.try_acquire_or_renew() is False  # a comes back: b holds a fresh Lease
    assert holder(api, namespace) == "op-b"


def test_writes_are_guarded_by_resource_version_so_two_racers_cannot_both_win(api: Any, namespace: str) -> None:
    a = LeaderElector(api, election(namespace, "op-a"))
    assert a.try_acquire_or_renew() is True
    read = api.get_lease(namespace, "orchestrator-operator")
    # two candidates replace from the same read: the first write wins, the second is a conflict
    first = api.replace_lease({**read, "spec": {**read["spec"], "holderIdentity": "op-b"}})
    second = api.replace_lease({**read, "spec": {**read["spec"], "holderIdentity": "op-c"}})
    assert first is not None and second is None
    assert holder(api, namespace) == "op-b"
    # and of two creates of one name, only one succeeds
    body = {"metadata": {"name": "other", "namespace": namespace}, "spec": {"holderIdentity": "x"}}
    assert api.create_lease(body) is not None and api.create_lease(body) is None


def test_a_released_lease_is_taken_at_once(api: Any, namespace: str) -> None:
    clock = Clock()
    a = LeaderElector(api, election(namespace, "op-a"), clock=clock)
    b_ = LeaderElector(api, election(namespace, "op-b"), clock=clock)
    assert a.try_acquire_or_renew() and not b_.try_acquire_or_renew()
    assert a.release() is True and holder(api, namespace) is None
    assert b_.try_acquire_or_renew() is True  # no wait for the lease duration
    assert a.release() is False  # not a's to release any more


def test_the_standby_takes_over_without_duplicating_a_rayjob(api: Any, namespace: str, start_operator: Any) -> None:
    add_pools(api, namespace, b.gpu_pool("a100", nodes=2, per_node=8))
    timing = {"lease_duration_s": 3.0, "renew_deadline_s": 2.0, "retry_period_s": 0.2}
    first = start_operator(namespace, election=election(namespace, "op-a", **timing))
    wait_for(lambda: first.leading.is_set(), "op-a to lead")
    health = f"http://127.0.0.1:{free_port()}/healthz"
    second = start_operator(namespace, liveness_endpoint=health, election=election(namespace, "op-b", **timing))
    assert not second.leading.is_set() and holder(api, namespace) == "op-a"
    assert probe(health) == (200, {"leader": False})  # the standby answers the Deployment's probes

    api.create_training_job(b.training_job("one", namespace, b.spec_data(
        "one", workers=8, gpus=1, accelerator="nvidia-a100-40gb")))
    wait_for(phase_is(api, namespace, "one", "Starting"), "the leader to start the first job")
    assert [rj["metadata"]["name"] for rj in rayjobs(api, namespace)] == ["one"]
    assert second.controller.book.placed(f"{namespace}/one") is None  # the standby did nothing

    first.stop(release=False)  # as a crash: the Lease stays, unrenewed
    wait_for(lambda: second.leading.is_set(), "the standby to take the Lease over")
    assert holder(api, namespace) == "op-b"
    assert api.get_lease(namespace, "orchestrator-operator")["spec"]["leaseTransitions"] == 1
    # kopf's own liveness endpoint now answers on the same port (its probe results: a dict)
    code, body = wait_for(lambda: (got := probe(health)) is not None and got[1] != {"leader": False} and got,
                          "kopf's /healthz")
    assert code == 200 and isinstance(body, dict)

    api.create_training_job(b.training_job("two", namespace, b.spec_data(
        "two", workers=8, gpus=1, accelerator="nvidia-a100-40gb")))
    wait_for(phase_is(api, namespace, "two", "Starting"), "the new leader to start the second job")
    assert sorted(rj["metadata"]["name"] for rj in rayjobs(api, namespace)) == ["one", "two"]
    assert len(api.list_rayjobs(namespace, f"{JOB_LABEL}=one")) == 1
    # the new leader took the first job's pool back from its RayJob: both hold a100, one node each
    assert second.controller.book.placed(f"{namespace}/one") == "a100"
    assert second.controller.book.placed(f"{namespace}/two") == "a100"


def test_leader_election_without_a_lease_namespace_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Any) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import main
    from orchestrator.operator import leader

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setattr(leader, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")  # not in a pod
    result = CliRunner().invoke(main, ["operator", "--leader-elect"])
    assert result.exit_code != 0
    assert "--leader-elect needs the Lease's namespace" in result.output
    assert "--lease-namespace NS" in result.output


def test_the_operator_options_for_the_networkpolicy_and_the_ray_user_reach_what_it_renders(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--operator-namespace / --kuberay-namespace / --prometheus-namespace / --ray-uid end up in the
    per-job NetworkPolicy and the pods' securityContext (the operator's RuntimeConfig)."""
    from click.testing import CliRunner

    from orchestrator.backends.k8s import client
    from orchestrator.backends.k8s.manifests import network_policy
    from orchestrator.cli import main
    from orchestrator.operator import controller

    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def capture(api: Any, config: Any) -> Any:
        seen["config"] = config
        raise Stop

    monkeypatch.setattr(client, "load_api_client", lambda context=None: None)
    monkeypatch.setattr(client, "KubeApi", lambda api_client: None)
    monkeypatch.setattr(controller, "Controller", capture)
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    result = CliRunner().invoke(main, ["operator", "--kuberay-namespace", "ray-system", "--prometheus-namespace",
                                       "monitoring", "--ray-uid", "2000"])
    assert "internal error: Stop" in result.output, result.output  # the captured Controller stopped it
    runtime = seen["config"].runtime
    assert (runtime.operator_namespace, runtime.kuberay_namespace, runtime.prometheus_namespace) == (
        "ops", "ray-system", "monitoring")
    assert (runtime.run_as_user, runtime.run_as_group) == (2000, 2000)
    job = {"metadata": {"name": "j", "namespace": "team-a", "uid": "u1"}}
    ingress = network_policy(job, runtime)["spec"]["ingress"]
    namespaces = [peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                  for rule in ingress[1:] for peer in rule["from"]]
    assert namespaces == ["ops", "ray-system", "monitoring"]


class HangingLeases:
    """The emulator's KubeApi, whose Lease calls hang (until released, at most ``hang_s``) once
    ``hang`` is set; records the request timeout each Lease call was given."""

    def __init__(self, api: Any, hang_s: float = 30.0) -> None:
        self.api, self.hang_s = api, hang_s
        self.hang, self.released = threading.Event(), threading.Event()
        self.timeouts: list[float | None] = []

    def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        self.timeouts.append(timeout)
        if self.hang.is_set():
            self.released.wait(self.hang_s)
        return getattr(self.api, method)(*args)

    def get_lease(self, *args: Any, timeout: float | None = None) -> Any:
        return self._call("get_lease", *args, timeout=timeout)

    def create_lease(self, *args: Any, timeout: float | None = None) -> Any:
        return self._call("create_lease", *args, timeout=timeout)

    def replace_lease(self, *args: Any, timeout: float | None = None) -> Any:
        return self._call("replace_lease", *args, timeout=timeout)


def test_a_leader_whose_lease_calls_hang_stops_acting_before_the_standby_takes_over(api: Any,
                                                                                     namespace: str) -> None:
    timing = {"lease_duration_s": 2.0, "renew_deadline_s": 1.0, "retry_period_s": 0.2}
    events: list[tuple[str, float]] = []  # (what, time.monotonic()): one clock for both replicas
    hanging = HangingLeases(api)
    outcome: dict[str, BaseException | None] = {}

    def replica(name: str, lease_api: Any, stop: threading.Event, leading: threading.Event,
                standby: threading.Event) -> threading.Thread:
        async def act(kopf_stop: threading.Event) -> None:  # stands for kopf: acts until told to stop
            events.append((f"{name} acts", time.monotonic()))
            while not kopf_stop.is_set():
                await asyncio.sleep(0.01)
            events.append((f"{name} stopped", time.monotonic()))

        def main() -> None:
            try:
                asyncio.run(run_elected(act, LeaderElector(lease_api, election(namespace, name, **timing)),
                                        stop_flag=stop, leading_flag=leading, standby_flag=standby))
                outcome[name] = None
            except BaseException as exc:  # noqa: BLE001 - inspected below
                outcome[name] = exc

        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        return thread

    flags = {n: (threading.Event(), threading.Event(), threading.Event()) for n in ("op-a", "op-b")}
    a = replica("op-a", hanging, *flags["op-a"])
    wait_for(lambda: flags["op-a"][1].is_set(), "op-a to lead")
    b_ = replica("op-b", api, *flags["op-b"])
    try:
        wait_for(lambda: flags["op-b"][2].is_set(), "op-b to stand by")
        hanging.hang.set()  # op-a's next renewal hangs on the Lease read
        wait_for(lambda: any(what == "op-b acts" for what, _ in events), "op-b to take the Lease over")
        hanging.released.set()  # the hung call returns (and op-a's thread can end)
        wait_for(lambda: not a.is_alive(), "op-a to give up", timeout=60)
    finally:
        hanging.released.set()
        flags["op-b"][0].set()
        flags["op-a"][0].set()
        a.join(60)
        b_.join(60)
    order = [what for what, _ in events]
    assert order == ["op-a acts", "op-a stopped", "op-b acts", "op-b stopped"]
    when = dict(events)
    assert when["op-a stopped"] < when["op-b acts"]
    assert isinstance(outcome["op-a"], LeadershipLost) and outcome["op-b"] is None
    assert holder(api, namespace) in ("op-b", None)  # op-b released it at its clean stop
    # every Lease call of op-a was bounded, at most by the renew deadline
    assert hanging.timeouts and all(t is not None and 0 < t <= timing["renew_deadline_s"] for t in hanging.timeouts)
