"""Wire types shared by the proxy and the backends: the bottom of the dependency graph.

``openai`` holds the data API's request models, ``registration`` what backends
tell the proxy, ``routing`` what the proxy knows about a request it routes.
Nothing here imports from the proxy, the backend, the registry or the policies.
"""

from inferno.schemas.openai import (
    ANY_MODEL,
    MAX_PROMPT_CHARS,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    ImageRequest,
    InferenceRequest,
    check_max_tokens,
    parse_body,
    parse_obj,
)
from inferno.schemas.registration import (
    WILDCARD_HOSTS,
    ModelSpec,
    NodeVitals,
    RegistrationPayload,
    Task,
    check_address,
)
from inferno.schemas.routing import PRIORITIES, Priority, RequestContext

__all__ = [
    "ANY_MODEL",
    "MAX_PROMPT_CHARS",
    "PRIORITIES",
    "WILDCARD_HOSTS",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "EmbeddingRequest",
    "ImageRequest",
    "InferenceRequest",
    "ModelSpec",
    "NodeVitals",
    "Priority",
    "RegistrationPayload",
    "RequestContext",
    "Task",
    "check_address",
    "check_max_tokens",
    "parse_body",
    "parse_obj",
]
