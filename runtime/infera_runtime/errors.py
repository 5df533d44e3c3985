"""Typed errors raised by the serving layer and the engines, and their OpenAI error shape.

Every error the runtime returns to a client is an :class:`InferaError`. Each subclass fixes its
HTTP status, OpenAI ``type`` and default ``code``; :meth:`InferaError.body` renders the
OpenAI error body ``{"error": {"message", "type", "param", "code"}}``. The HTTP layer turns
framework exceptions (FastAPI validation errors, unknown routes, ...) into these types in one
function (``infera_runtime.app.to_infera_error``) and never builds an error body itself.

This module has no HTTP framework imports: the serving layer and the engines raise these errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class InferaError(Exception):
    """Base class: an error with an HTTP status and an OpenAI error body."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(InferaError):
    """Bad input: malformed JSON, invalid or unsupported parameters (400)."""

    status = 400
    error_type = "invalid_request_error"


class BodyTimeoutError(InferaError):
    """The client did not send its whole request body in time (408; slowloris protection)."""

    status = 408
    error_type = "invalid_request_error"
    default_code = "body_timeout"


class PayloadTooLargeError(InferaError):
    """The request body is larger than ``max_body_bytes`` (413)."""

    status = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class UnsupportedMediaTypeError(InferaError):
    """The body is declared as something other than JSON (415)."""

    status = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"


class ContextLengthExceededError(InvalidRequestError):
    """The prompt, or the prompt plus max_tokens, does not fit in the model's context (400)."""

    default_code = "context_length_exceeded"


class ModelNotFoundError(InferaError):
    """The request names a model this server does not serve.

    400 (bad input, as issue 4 asks), with OpenAI's code ``model_not_found``.
    """

    status = 400
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class NotFoundError(InferaError):
    """Unknown route (404)."""

    status = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowedError(InferaError):
    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class AuthenticationError(InferaError):
    """Missing or wrong API key (401)."""

    status = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class RateLimitError(InferaError):
    """Admission control is full: too many requests in flight and queued (429)."""

    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class ServiceUnavailableError(InferaError):
    """Not ready: engine loading, engine dead, or the server is draining (503)."""

    status = 503
    error_type = "service_unavailable_error"
    default_code = "service_unavailable"


class RequestTimeoutError(InferaError):
    """The request ran past ``request_timeout_s`` (queue wait plus generation); it was aborted."""

    status = 504
    error_type = "timeout_error"
    default_code = "request_timeout"


class InternalError(InferaError):
    """An unexpected server-side failure (500). Never used for bad input."""

    status = 500
    error_type = "internal_error"
    default_code = "internal_error"


def _loc_to_param(loc: Sequence[Any]) -> str | None:
    """``("body", "messages", 0, "content")`` -> ``"messages[0].content"``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # pydantic names union members by type (e.g. "str", "list[int]"): not a field name.
            text = str(part)
            if "[" in text or text in ("str", "int", "float", "bool", "function-after"):
                continue
            out += f".{text}" if out else text
    return out or None


def validation_error(errors: Sequence[Mapping[str, Any]]) -> InvalidRequestError:
    """Turn pydantic/FastAPI validation errors into one 400 in OpenAI's shape."""
    if not errors:
        return InvalidRequestError("Invalid request.")
    first = errors[0]
    kind = str(first.get("type", ""))
    loc = first.get("loc", ())
    if kind == "json_invalid":
        ctx = first.get("ctx") or {}
        detail = ctx.get("error", "") if isinstance(ctx, Mapping) else ""
        return InvalidRequestError(
            f"We could not parse the JSON body of your request. ({detail})".replace(" ()", ""),
            code="invalid_json",
        )
    param = _loc_to_param(loc)
    if kind == "missing" and param is None:
        return InvalidRequestError(
            "The request body is missing or is not a JSON object.", code="invalid_json"
        )
    messages = []
    for err in errors[:5]:
        where = _loc_to_param(err.get("loc", ())) or "body"
        messages.append(f"{where}: {err.get('msg', 'invalid value')}")
    if len(errors) > 5:
        messages.append(f"... and {len(errors) - 5} more")
    return InvalidRequestError("Invalid request: " + "; ".join(messages), param=param, code="invalid_value")
