"""Observability: access logs (and, later, metrics, logging set-up and tracing)."""
