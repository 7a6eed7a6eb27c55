"""Structured logging for Cloud Logging: one JSON object per line on stdout.

Each record carries `severity`, `message`, the request id, and the trace id from
`X-Cloud-Trace-Context` in the field Cloud Logging correlates on. A redaction pass removes
anything shaped like a JWT or a Supabase secret key from every message, as a second line of
defence: the code never logs keys, tokens or event payloads in the first place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import traceback
from contextvars import ContextVar
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
trace_var: ContextVar[str | None] = ContextVar("trace", default=None)

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_SECRET_KEY = re.compile(r"sb_(secret|publishable)_[A-Za-z0-9_-]+")
_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+@")

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


def redact(text: str) -> str:
    text = _JWT.sub("[redacted-jwt]", text)
    text = _SECRET_KEY.sub(r"sb_\1_[redacted]", text)
    return _URL_PASSWORD.sub(r"\1[redacted]@", text)


def trace_from_header(header: str | None) -> str | None:
    """The trace id of `X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1`."""
    if not header:
        return None
    trace = header.split("/", 1)[0].strip()
    return trace if re.fullmatch(r"[0-9a-fA-F]{1,64}", trace) else None


class CloudLoggingFormatter(logging.Formatter):
    """Formats a record as the JSON line Cloud Logging parses from stdout."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": redact(record.getMessage()),
            "logger": record.name,
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        trace = trace_var.get()
        if trace:
            project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCP_PROJECT")
            entry["logging.googleapis.com/trace"] = (
                f"projects/{project}/traces/{trace}" if project else trace
            )
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The exception's type and where it happened; never its message, which could
            # quote data from a request.
            entry["exception"] = record.exc_info[0].__name__
            entry["stack_trace"] = redact("".join(traceback.format_tb(record.exc_info[2])))
        return json.dumps(entry, default=str)


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose failures stay quiet about what was being logged."""

    def handleError(self, record: logging.LogRecord) -> None:
        # logging's default prints the traceback of the failed write, and its chain holds the
        # exception being logged, message and all (which may quote a request): one line instead.
        failure = sys.exc_info()[0]
        name = failure.__name__ if failure else "unknown"
        with contextlib.suppress(Exception):  # nowhere left to report to
            sys.stderr.write(f"a log line could not be written ({name})\n")


def setup(level: int = logging.INFO) -> None:
    """Route the package's logs to stdout as Cloud Logging JSON lines (idempotent)."""
    logger = logging.getLogger("functions")
    if any(isinstance(h.formatter, CloudLoggingFormatter) for h in logger.handlers):
        return
    handler = _StdoutHandler(sys.stdout)
    handler.setFormatter(CloudLoggingFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
