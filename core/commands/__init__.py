"""The top-level commands that span the trainer and the operator (imported lazily by atoll.cli)."""
