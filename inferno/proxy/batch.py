"""``POST /batch_inference``: fan a list of /inference requests (text or image) out,
answer in order.

Each item is validated and routed on its own (request id ``<id>.<index>``), so
one bad or failed item never fails the batch: it gets its own status and error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from inferno.api import ParsedText
from inferno.errors import BadRequest, InfernoError
from inferno.http.server import Request
from inferno.proxy.bodies import with_model
from inferno.proxy.forward import Forwarder, Job
from inferno.schemas.routing import RequestContext

#: one item's routing context and parsed form, from the proxy app
Contextualize = Callable[[Request, str, object], tuple[RequestContext, ParsedText]]


class BatchRunner:
    def __init__(self, forwarder: Forwarder, max_items: int, contextualize: Contextualize) -> None:
        self._forwarder = forwarder
        self._max = max_items
        self._contextualize = contextualize

    async def run(
        self,
        data: Any,
        request: Request,
        rid: str,
        t0: float,
        deadline: float,
        prepare: Callable[[Job], None] | None = None,
    ) -> bytes:
        """Answer the decoded batch ``data``; ``prepare`` admits each item's job (an API
        key's model list and budgets)."""
        items = data.get("requests") if isinstance(data, dict) else None
        if not isinstance(items, list) or not 1 <= len(items) <= self._max:
            raise BadRequest(
                f'body must be {{"requests": [...]}} with 1 to {self._max} /inference requests',
                param="requests",
            )
        results = await asyncio.gather(
            *(
                self._one(request, f"{rid}.{i}", i, item, t0, deadline, prepare)
                for i, item in enumerate(items)
            )
        )
        ok = sum(1 for r in results if r["status"] == 200)
        return orjson.dumps(
            {
                "object": "batch",
                "request_id": rid,
                "results": results,
                "succeeded": ok,
                "failed": len(results) - ok,
            }
        )

    async def _one(
        self,
        request: Request,
        rid: str,
        index: int,
        item: Any,
        t0: float,
        deadline: float,
        prepare: Callable[[Job], None] | None,
    ) -> dict[str, Any]:
        try:
            ctx, parsed = self._contextualize(request, rid, item)
            if parsed.stream:
                raise BadRequest("stream is not supported inside a batch", param="stream")
            body = orjson.dumps(item)
            if ctx.model != parsed.model:  # an alias: the backend sees the real id
                body = with_model(body, parsed.model_field, ctx.model)
            job = Job(ctx, b"/inference", body, parsed.max_tokens, t0, deadline, parsed.model_field)
            if self._forwarder.tracing is not None:
                job.traceparent = request.headers.get(b"traceparent")
            job.prompt_chars = len(parsed.prompt)
            if prepare is not None:
                prepare(job)
            try:
                outcome = await self._forwarder.call(job, splice_timings=True)
            finally:
                if job.on_done is not None:
                    job.on_done()
        except InfernoError as exc:
            return {
                "index": index,
                "status": exc.status,
                "request_id": rid,
                "error": {"message": exc.message, "type": exc.kind, "code": exc.code, "param": exc.param},
            }
        result: dict[str, Any] = {
            "index": index,
            "status": outcome.status,
            "request_id": rid,
            "backend": outcome.worker.node_id,
        }
        try:
            result["response" if outcome.status == 200 else "error"] = orjson.loads(outcome.body)
        except orjson.JSONDecodeError:
            result["error"] = {"message": "backend returned a non-JSON body", "code": "bad_gateway"}
        return result
