"""A client of the proxy's admin API (what ``inferno deploy`` and ``inferno up`` use).

Synchronous (``urllib``), one deadline per call, answers bounded in size; a 4xx/5xx
raises ``AdminError`` with the server's own message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from inferno.errors import AdminError

#: the most of an answer read (a list of deployments with their instances fits)
MAX_RESPONSE_BYTES = 16 << 20


class AdminClient:
    """The proxy's ``/v1/deployments`` and ``/status``, over urllib with a deadline each."""

    def __init__(self, ops_addr: str, token: str | None, timeout_s: float = 10.0) -> None:
        self.base = ops_addr if ops_addr.startswith("http") else f"http://{ops_addr}"
        self._token = token
        self._timeout_s = timeout_s

    def call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = (
                "application/merge-patch+json" if method == "PATCH" else "application/json"
            )
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise AdminError(f"{method} {path}: {exc.code} {_error_message(exc)}", status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach the proxy at {self.base}: {reason}") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise AdminError(f"{method} {path}: the answer is larger than {MAX_RESPONSE_BYTES} bytes")
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise AdminError(f"{method} {path}: the answer is not JSON") from None

    def views(self) -> list[dict[str, Any]]:
        body = self.call("GET", "/v1/deployments")
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise AdminError("GET /v1/deployments: unexpected answer")
        return list(body["data"])


def deployment_path(deployment_id: str) -> str:
    return "/v1/deployments/" + urllib.parse.quote(deployment_id, safe="")


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read(64 * 1024))
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message") if isinstance(error, dict) else error
        return str(message or exc.reason)
    except (ValueError, OSError):
        return str(exc.reason)
