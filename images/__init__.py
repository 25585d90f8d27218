"""Atoll's container images: Containerfiles (images/<name>/Containerfile), the engine that
builds and holds them (images.engine) and `make images` (images.build)."""
