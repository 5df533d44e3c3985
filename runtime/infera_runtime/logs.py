"""Structured logging: one JSON object per line, with the current request id.

``request_id_var`` is set by the HTTP middleware for each request; every log line written while
handling it carries ``request_id``. Extra fields go in ``extra={...}``. Secrets never reach the
output: API keys registered with :func:`register_secret` and any ``Bearer <token>`` are
replaced by ``[REDACTED]`` in messages, extra fields and tracebacks.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import datetime as _dt
import json
import logging
import os
import re
import sys
import tempfile
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("infera_request_id", default=None)

REDACTED = "[REDACTED]"
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+")
_secrets: set[str] = set()

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "color_message",
    "vllm_process_name",
    "taskName",
}


def register_secret(value: str) -> None:
    """Never print ``value`` in a log line (API keys)."""
    if value:
        _secrets.add(value)


def clear_secrets() -> None:
    _secrets.clear()


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id"?, ...extra, "exc"?}`` on one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Accept (and ignore) the arguments logging.config passes to formatters.
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            out["request_id"] = rid
        if record.processName not in ("MainProcess", None):
            out["process"] = record.processName
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in out and not key.startswith("_"):
                out[key] = _redact_value(value)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = redact(record.exc_text)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            line += f" request_id={rid}"
        extras = {
            k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and not k.startswith("_")
        }
        if extras:
            line += " " + " ".join(f"{k}={_redact_value(v)}" for k, v in extras.items() if k != "request_id")
        return redact(line)


def _formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(log_format: str = "json", log_level: str = "info") -> None:
    """Route every logger (ours, uvicorn's and, through a config file, vLLM's) to stderr."""
    level = log_level.upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the runtime writes its own access log
    _configure_vllm_logging(log_format, level)


def reassert_root_level(log_level: str) -> None:
    """Undo what a library did to the root logger while the backend loaded.

    vLLM's app imports ``model_hosting_container_standards``, which sets the root logger and
    its handlers to ERROR (``SAGEMAKER_CONTAINER_LOG_LEVEL``, default ERROR); without this the
    runtime's own info lines (the access log) would vanish once the model is loaded.
    """
    root = logging.getLogger()
    root.setLevel(log_level.upper())
    for handler in root.handlers:
        handler.setLevel(logging.NOTSET)


def _configure_vllm_logging(log_format: str, level: str) -> None:
    """vLLM configures its own handlers (also in its engine processes); give it ours.

    ``VLLM_LOGGING_CONFIG_PATH`` is read by vLLM in this process and in the processes it spawns,
    so the engine core logs JSON lines too. A config the user set is left alone.
    """
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH"):
        return
    formatter = (
        "infera_runtime.logs.JsonFormatter" if log_format == "json" else "infera_runtime.logs.TextFormatter"
    )
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"infera": {"()": formatter}},
        "handlers": {
            "infera": {"class": "logging.StreamHandler", "formatter": "infera", "stream": "ext://sys.stderr"}
        },
        "loggers": {"vllm": {"handlers": ["infera"], "level": level, "propagate": False}},
    }
    fd, path = tempfile.mkstemp(prefix="infera-vllm-logging-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh)
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = path
    atexit.register(_remove, path)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", level)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
