"""The auto-scheduler: node pools, queues with quotas, gang placement, preemption.

Pure Python: no Ray, Kubernetes, torch or TensorFlow import, so every backend and the trace
simulator call the same code. A pass reads a :class:`ClusterState` and returns decisions
(:class:`Place`, :class:`Preempt`, :class:`Wait`); the caller applies them. The clock is injected.

    cluster = load_cluster("examples/clusters/gpu.yaml")
    state = ClusterState(cluster)
    scheduler = Scheduler(cluster, "las", clock)
    state.submit("job-1", GangRequest(workers=16, accelerators_per_worker=1,
                                      accelerators=("nvidia-a100-40gb",)), clock.now())
    result = scheduler.schedule(state)
    state.apply(result.decisions, clock.now())
"""

from orchestrator.scheduler.clock import Clock, ManualClock, SystemClock
from orchestrator.scheduler.cluster import ClusterSpec, NodePool, Queue, Quota, Taint, load_cluster
from orchestrator.scheduler.core import PassResult, Scheduler
from orchestrator.scheduler.decisions import Decision, Place, Placement, Preempt, Reason, Wait
from orchestrator.scheduler.jobs import GangRequest, Toleration, request_from_spec
from orchestrator.scheduler.policies import POLICIES, Policy, get_policy
from orchestrator.scheduler.state import ClusterState, Job, JobStatus, default_checkpoint_cost

__all__ = [
    "POLICIES",
    "Clock",
    "ClusterSpec",
    "ClusterState",
    "Decision",
    "GangRequest",
    "Job",
    "JobStatus",
    "ManualClock",
    "NodePool",
    "PassResult",
    "Place",
    "Placement",
    "Policy",
    "Preempt",
    "Queue",
    "Quota",
    "Reason",
    "Scheduler",
    "SystemClock",
    "Taint",
    "Toleration",
    "Wait",
    "default_checkpoint_cost",
    "get_policy",
    "load_cluster",
    "request_from_spec",
]
