"""Structured logging for every atoll process (structlog over the standard library).

Human-readable key=value lines on a terminal, JSON lines when ATOLL_LOG_FORMAT=json
(pods). Secrets never go through here: callers log names of Secrets, never values.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import structlog


@functools.cache
def configure(level: str | None = None) -> None:
    """Configure structlog and the standard library once per process."""
    level_name = (level or os.environ.get("ATOLL_LOG_LEVEL", "INFO")).upper()
    json_lines = os.environ.get("ATOLL_LOG_FORMAT", "console") == "json"
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level_name)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level_name)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A bound logger for one module; configures logging on first use."""
    configure()
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
