"""The dashboard's try-it box: one request through the proxy's own data port.

The request goes out over loopback to the data port, exactly as a client's
would: same validation, API keys, routing, retries and metrics. The answer comes
back with the backend that served it and the proxy's timings.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from inferno.errors import UpstreamError
from inferno.http.client import ResponseLimits, Timeouts, UpstreamPool, build_request

#: model ids as the registry accepts them
_MODEL = r"^[A-Za-z0-9_.:@-]{1,128}$"
#: what an API key may look like in a header: visible ASCII, no spaces
_KEY = r"^[\x21-\x7e]{1,256}$"


class TryRequest(BaseModel):
    """What the try-it box sends (``POST /dashboard/api/try``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["chat", "embeddings", "image"] = "chat"
    prompt: str = Field("", max_length=8000)
    #: a base64 image (the page shrinks it before sending), for ``kind: image``
    image: str | None = Field(None, max_length=200_000)
    model: str | None = Field(None, pattern=_MODEL)
    max_tokens: int = Field(64, ge=1, le=512)
    api_key: str | None = Field(None, pattern=_KEY)


def request_for(req: TryRequest) -> tuple[bytes, dict[str, Any]]:
    """The data-port path and JSON body for a try."""
    if req.kind == "chat":
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": req.prompt or "Hello!"}],
            "max_tokens": req.max_tokens,
        }
        if req.model:
            body["model"] = req.model
        return b"/v1/chat/completions", body
    if req.kind == "embeddings":
        body = {"input": req.prompt or "Hello!"}
        if req.model:
            body["model"] = req.model
        return b"/v1/embeddings", body
    body = {"data": req.image or "", "top_k": 5}
    if req.model:
        body["model_type"] = req.model
    return b"/inference", body


def answer_of(kind: str, data: Any) -> str:
    """The part of an answer a person reads first."""
    if not isinstance(data, dict):
        return ""
    try:
        if kind == "chat":
            return str(data["choices"][0]["message"]["content"])
        if kind == "embeddings":
            vector = data["data"][0]["embedding"]
            head = ", ".join(f"{v:.4f}" for v in vector[:6])
            return f"{len(vector)} dimensions: [{head}, ...]"
        return ", ".join(f"{p['class']} ({p['confidence']:.2f})" for p in data["predictions"])
    except (KeyError, IndexError, TypeError, ValueError):
        error = data.get("error")
        return str(error.get("message", "")) if isinstance(error, dict) else ""


class TryIt:
    def __init__(self, data_host: str, timeout_s: float) -> None:
        self._host = data_host
        self._port = 0
        self._timeout_s = timeout_s
        self._pool = UpstreamPool(max_idle_per_host=2, limits=ResponseLimits())

    def set_port(self, port: int) -> None:
        self._port = port

    @property
    def address(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(self._host, self._host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self._port}"

    async def run(self, req: TryRequest) -> dict[str, Any]:
        path, payload = request_for(req)
        headers = b"Content-Type: application/json\r\n"
        if req.api_key:
            headers += b"Authorization: Bearer " + req.api_key.encode() + b"\r\n"
        address = self.address
        data = build_request(b"POST", path, address.encode(), headers, orjson.dumps(payload))
        t0 = time.perf_counter()
        timeouts = Timeouts(connect_s=2.0, first_byte_s=self._timeout_s, read_s=self._timeout_s)
        try:
            response = await self._pool.request(address, data, timeouts=timeouts)
        except UpstreamError as exc:
            return {
                "ok": False,
                "status": 0,
                "answer": f"the proxy's data port did not answer: {exc.message}",
            }
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        try:
            body: Any = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            body = None

        def header(name: bytes) -> str | None:
            value = response.header(name)
            return value.decode("latin-1") if value is not None else None

        return {
            "ok": response.status == 200,
            "status": response.status,
            "path": path.decode(),
            "answer": answer_of(req.kind, body),
            "backend": header(b"x-inferno-backend"),
            "backend_addr": header(b"x-inferno-backend-addr"),
            "model": header(b"x-inferno-model"),
            "request_id": header(b"x-request-id"),
            "server_timing": header(b"server-timing"),
            "elapsed_ms": round(elapsed_ms, 2),
            "timings": body.get("timings") if isinstance(body, dict) else None,
            "usage": body.get("usage") if isinstance(body, dict) else None,
        }

    async def aclose(self) -> None:
        await self._pool.aclose()
