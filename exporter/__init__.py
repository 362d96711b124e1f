"""engine-fleet-exporter: fleet read API and Prometheus metrics for an engine orchestrator."""

__version__ = "0.1.0"
