"""API shapes, one adapter each, keyed by path: the proxy and the backend share them."""

from inferno.api.base import ParsedText, RenderMeta, TextAPI
from inferno.api.inference import InferenceAPI
from inferno.api.openai import DEFAULT_CHAT_MAX_TOKENS, ChatAPI, CompletionAPI

INFERENCE = InferenceAPI()
#: every text-generation API, by path
TEXT_APIS: dict[str, TextAPI] = {api.path: api for api in (INFERENCE, ChatAPI(), CompletionAPI())}

__all__ = [
    "DEFAULT_CHAT_MAX_TOKENS",
    "INFERENCE",
    "TEXT_APIS",
    "ChatAPI",
    "CompletionAPI",
    "InferenceAPI",
    "ParsedText",
    "RenderMeta",
    "TextAPI",
]
