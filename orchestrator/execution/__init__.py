"""Execution: how one job runs once a backend has chosen where.

``driver`` runs a job on a Ray it can reach (prepares data, starts Ray Train, turns worker events
into job state), ``queue`` admits jobs to this machine or a Ray cluster (gang placement, priorities,
preemption), ``tracker`` follows one run's progress and failures. The backends (``backends/``) call
into this package; the workers' side lives in ``runtime/``.
"""
