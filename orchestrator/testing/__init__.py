"""Shipped fakes and builders for tests and for trying things out (DESIGN habit 6).

* :mod:`orchestrator.testing.kube` -- a Kubernetes API emulator over real HTTP on 127.0.0.1
  (needs the ``kmock`` package: ``pip install 'train-orchestrator[test]'``);
* :mod:`orchestrator.testing.builders` -- job specs, TrainingJobs and node-pool ConfigMaps;
* :mod:`orchestrator.testing.validation` -- strict validation against a CRD's schema.

Nothing is imported here, so importing the package costs nothing.
"""
