"""orchestrator: one YAML job spec, one command, from a laptop to GPU and TPU clusters."""

__version__ = "0.1.0"
