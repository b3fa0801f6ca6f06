"""One module per engine: the argv a plan runs, and the engine's own log lines (memory, readiness, OOM)."""
