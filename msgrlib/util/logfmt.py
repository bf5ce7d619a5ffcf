"""Structured logs: one ``key=value`` line per event on stderr.

Library modules log an event name with ``extra={"fields": {...}}`` and never
configure logging; only the CLI calls :func:`setup`. Fields are metadata only:
no message body, passcode or key is ever passed to a logger.
"""

from __future__ import annotations

import logging
import sys
import time


def _value(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info event=connect addr=127.0.0.1:5000``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={stamp}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}",
                 f"event={_value(record.getMessage())}"]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            parts.extend(f"{key}={_value(val)}" for key, val in fields.items())
        if record.exc_info and record.levelno >= logging.ERROR:
            parts.append(f"error={_value(record.exc_info[1])}")
        return " ".join(parts)


def setup(level: str = "info", stream=None) -> None:
    """Send msgr's logs (and asyncio's) to stderr as logfmt lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    for name in ("msgr", "asyncio"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(level.upper() if name == "msgr" else logging.WARNING)
