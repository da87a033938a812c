"""The proxy's public API as an OpenAPI 3.1 document, built from the request models.

Served at ``GET /openapi.json`` on the data port; the schemathesis fuzz run
(``tests/system/test_fuzz.py``, ``make fuzz``) generates its requests from it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from inferno.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageRequest,
    InferenceRequest,
)

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "string"},
            },
        }
    },
}


def build() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    responses = {
        "200": {"description": "the answer (JSON, or server-sent events with stream: true)"},
        "4XX": error,
        "503": error,
        "504": error,
    }

    def post(summary: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                "responses": responses,
            }
        }

    inference = {"oneOf": [ref(InferenceRequest), ref(ImageRequest)]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Inferno", "version": "1", "description": "The proxy's data port (docs/api.md)."},
        "paths": {
            "/inference": post("Text generation, or image classification with data", inference),
            "/v1/chat/completions": post("OpenAI chat completions", ref(ChatCompletionRequest)),
            "/v1/completions": post("OpenAI completions", ref(CompletionRequest)),
            "/v1/embeddings": post("OpenAI embeddings", ref(EmbeddingRequest)),
            "/batch_inference": post(
                "Several /inference requests, answered in order",
                {
                    "type": "object",
                    "required": ["requests"],
                    "properties": {"requests": {"type": "array", "minItems": 1, "items": inference}},
                },
            ),
            "/v1/models": {"get": {"summary": "Models served by healthy backends", "responses": responses}},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
