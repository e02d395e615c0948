"""Metric names (defined once), the TensorBoard writer and the Prometheus exporter."""
