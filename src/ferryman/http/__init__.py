"""The HTTP proxy engine: client and upstream connections, the per-request exchange, hooks."""
