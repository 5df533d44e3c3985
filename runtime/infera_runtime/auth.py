"""API keys: ``Authorization: Bearer <key>`` checked against ``api_key_file`` (one key per line).

Blank lines and lines starting with ``#`` are ignored. The file is re-read when it changes
(checked at most every few seconds), so a rotated Kubernetes Secret takes effect without a
restart; a re-read that finds no key keeps the previous keys. Every key is compared with
:func:`hmac.compare_digest` (all of them, whatever matches), and keys are registered with the
log redactor so they never appear in a log line.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from pathlib import Path

from .errors import AuthenticationError
from .logs import register_secret

log = logging.getLogger("infera.auth")
RELOAD_INTERVAL_S = 5.0


class KeyFileError(Exception):
    """The key file cannot be read or holds no key (fatal at start-up)."""


def read_keys(path: Path) -> list[bytes]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"api_key_file {path}: cannot read ({exc.__class__.__name__})") from exc
    keys = []
    for line in text.splitlines():
        key = line.strip()
        if key and not key.startswith("#"):
            register_secret(key)
            keys.append(key.encode())
    if not keys:
        raise KeyFileError(f"api_key_file {path}: holds no key")
    return keys


class ApiKeys:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys = read_keys(path)
        self._mtime = self._stat()
        self._next_check = time.monotonic() + RELOAD_INTERVAL_S

    def _stat(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return None

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + RELOAD_INTERVAL_S
        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return
        try:
            self._keys = read_keys(self.path)
            self._mtime = mtime
            log.info("api keys reloaded", extra={"keys": len(self._keys)})
        except KeyFileError as exc:
            log.warning("keeping the previous api keys: %s", exc)

    def check(self, authorization: str | None) -> None:
        """Raise AuthenticationError unless ``authorization`` is ``Bearer <a known key>``."""
        self._maybe_reload()
        if not authorization:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("Malformed Authorization header: expected 'Bearer <key>'.")
        given = token.encode()
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(key, given)
        if not ok:
            raise AuthenticationError("Incorrect API key provided.")
