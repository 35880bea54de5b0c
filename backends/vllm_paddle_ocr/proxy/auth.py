"""The proxy's API key: every route but /health and /v1/models (GPUStack's readiness probe) asks for it."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Awaitable, Callable, Optional

from .errors import error_response, openai_error_response

# Probes answer without a key: a control plane checks readiness before it knows any.
OPEN_PATHS = frozenset({"/health", "/v1/models"})


def bearer_header(key: str) -> str:
    """The Authorization value that carries `key`."""
    return f"Bearer {key}"


class ApiKeyGuard:
    """Checks `Authorization: Bearer <key>` in constant time; None lets every request through."""

    def __init__(
        self, key: Optional[str], *, open_paths: frozenset[str] = OPEN_PATHS, open_prefixes: tuple[str, ...] = ()
    ) -> None:
        self._digest = hashlib.sha256(key.encode()).digest() if key else None
        self._open_paths = open_paths
        self._open_prefixes = open_prefixes  # static assets with no user data (a browser sends no header for them)

    @property
    def enabled(self) -> bool:
        """Whether a key is asked for."""
        return self._digest is not None

    def allows(self, scope: dict[str, Any]) -> bool:
        """Whether this request may go on: no key set, an open path, or the right bearer token."""
        path = scope["path"]
        if self._digest is None or path in self._open_paths or path.startswith(self._open_prefixes):
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    return hmac.compare_digest(hashlib.sha256(token.strip().encode()).digest(), self._digest)
        return False

    async def refuse(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        """401 with a challenge: in the OpenAI shape on /v1 paths, PaddleX's shape elsewhere."""
        message = "Missing or wrong API key: send 'Authorization: Bearer <key>' with the key this server was started with"
        if scope["path"].startswith("/v1/"):
            response = openai_error_response(401, message, "AuthenticationError")
        else:
            response = error_response(401, message)
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)
