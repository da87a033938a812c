"""API shapes, one adapter each, keyed by path: the proxy and the backend share them."""

from inferno.api.base import API, ParsedText, RenderMeta, TextAPI
from inferno.api.embeddings import EmbeddingsAPI
from inferno.api.inference import InferenceAPI
from inferno.api.openai import DEFAULT_CHAT_MAX_TOKENS, ChatAPI, CompletionAPI

INFERENCE = InferenceAPI()
#: every text-generation API, by path
TEXT_APIS: dict[str, TextAPI] = {api.path: api for api in (INFERENCE, ChatAPI(), CompletionAPI())}
EMBEDDINGS = EmbeddingsAPI()
#: every API the proxy forwards, by path
APIS: dict[str, API] = {**TEXT_APIS, EMBEDDINGS.path: EMBEDDINGS}

__all__ = [
    "API",
    "APIS",
    "DEFAULT_CHAT_MAX_TOKENS",
    "EMBEDDINGS",
    "INFERENCE",
    "TEXT_APIS",
    "ChatAPI",
    "CompletionAPI",
    "EmbeddingsAPI",
    "InferenceAPI",
    "ParsedText",
    "RenderMeta",
    "TextAPI",
]
