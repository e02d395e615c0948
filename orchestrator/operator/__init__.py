"""The Kubernetes operator: TrainingJob custom resources in, KubeRay RayJobs on node pools out.

* :mod:`~orchestrator.operator.reconcile` -- the decisions, a pure function;
* :mod:`~orchestrator.operator.controller` -- gathers what the cluster looks like, asks the
  scheduler (through :class:`orchestrator.backends.k8s.placement.PlacementBook`), carries out
  the decisions;
* :mod:`~orchestrator.operator.handlers` -- thin kopf handlers and the operator's entry point;
* :mod:`~orchestrator.operator.metrics` -- the operator's own Prometheus metrics.

Importing this package imports neither kopf nor the kubernetes client; ``handlers`` does.
"""
