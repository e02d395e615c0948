"""Backends: where a job runs (local Ray, a remote Ray cluster, Kubernetes)."""
