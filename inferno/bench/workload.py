"""What the load tester sends: request kinds and prompts (built in or from JSONL)."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import orjson

KINDS = ("inference", "chat", "chat-stream", "batch", "embeddings", "image")

BUILTIN_PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Explain in one sentence why the sky is blue.",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Give me a synonym for happy.",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "List four planets of the solar system.",
    "How do you say thank you in Spanish?",
    "What does a load balancer do?",
    "Suggest a name for a pet turtle.",
    "Describe the taste of a lemon.",
    "Why do leaves change colour in autumn?",
    "Write a one-line motivational quote.",
    "What is the boiling point of water at sea level?",
    "Translate 'good morning' into French.",
    "Give an example of a mammal that can fly.",
    "What is the opposite of cold?",
    "Tell me a fun fact about octopuses.",
    "Recommend a short book for a long train ride.",
    "What are the three states of matter?",
    "Explain recursion to a five-year-old.",
    "Name a famous bridge in San Francisco.",
    "What is the largest ocean on Earth?",
)


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    system: str | None = None


def load_prompts(path: str | None) -> list[Prompt]:
    """Built-in prompts, or one JSON object per line: {"prompt": ...} or {"messages": [...]}."""
    if path is None:
        return [Prompt(p) for p in BUILTIN_PROMPTS]
    prompts: list[Prompt] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
        if isinstance(item, dict) and isinstance(item.get("prompt"), str):
            prompts.append(Prompt(item["prompt"], item.get("system")))
        elif isinstance(item, dict) and isinstance(item.get("messages"), list):
            user = [m.get("content", "") for m in item["messages"] if m.get("role") == "user"]
            system = [m.get("content", "") for m in item["messages"] if m.get("role") == "system"]
            prompts.append(Prompt("\n".join(user), system[0] if system else None))
        else:
            raise ValueError(f'{path}:{number}: expected {{"prompt": str}} or {{"messages": [...]}}')
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def synthetic_image(seed: int = 0) -> bytes:
    """A 320x240 JPEG of smooth colour gradients: something to classify when the user
    gave no photo (``--image``)."""
    import io

    from PIL import Image

    image = Image.new("RGB", (320, 240))
    image.putdata(
        [
            ((x * 4 + seed) % 256, (y * 3 + 2 * seed) % 256, (x + y) % 256)
            for y in range(240)
            for x in range(320)
        ]
    )
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def load_images(paths: tuple[str, ...]) -> list[bytes]:
    return [Path(p).read_bytes() for p in paths] if paths else [synthetic_image()]


class Workload:
    """Builds request bodies of one kind, cycling through the prompts (or images)."""

    def __init__(
        self,
        kind: str,
        prompts: list[Prompt],
        *,
        max_tokens: int,
        model: str | None = None,
        batch_size: int = 4,
        images: list[bytes] | None = None,
        seed: int = 0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
        self.kind = kind
        shuffled = list(prompts)
        random.Random(seed).shuffle(shuffled)
        self._cycle = itertools.cycle(shuffled)
        self._max_tokens = max_tokens
        self._model = model
        self._batch = batch_size
        if kind == "image":
            import base64

            encoded = [base64.b64encode(image).decode() for image in images or [synthetic_image()]]
            self._images = itertools.cycle(encoded)

    @property
    def items(self) -> int:
        """Work items in one request: texts embedded, images classified, batch items."""
        return self._batch if self.kind in ("embeddings", "batch") else 1

    @property
    def path(self) -> bytes:
        return {
            "inference": b"/inference",
            "chat": b"/v1/chat/completions",
            "chat-stream": b"/v1/chat/completions",
            "batch": b"/batch_inference",
            "embeddings": b"/v1/embeddings",
            "image": b"/inference",
        }[self.kind]

    @property
    def streaming(self) -> bool:
        return self.kind == "chat-stream"

    def _inference(self, prompt: Prompt) -> dict[str, object]:
        body: dict[str, object] = {"prompt": prompt.text, "max_tokens": self._max_tokens}
        if self._model:
            body["model"] = self._model
        return body

    def next_body(self) -> bytes:
        prompt = next(self._cycle)
        if self.kind == "inference":
            return orjson.dumps(self._inference(prompt))
        if self.kind == "batch":
            return orjson.dumps(
                {"requests": [self._inference(next(self._cycle)) for _ in range(self._batch)]}
            )
        if self.kind == "embeddings":
            texts = [prompt.text] + [next(self._cycle).text for _ in range(self._batch - 1)]
            embed: dict[str, object] = {"input": texts}
            if self._model:
                embed["model"] = self._model
            return orjson.dumps(embed)
        if self.kind == "image":
            return orjson.dumps({"data": next(self._images), "model_type": self._model or "any", "top_k": 5})
        messages = [{"role": "user", "content": prompt.text}]
        if prompt.system:
            messages.insert(0, {"role": "system", "content": prompt.system})
        body: dict[str, object] = {"messages": messages, "max_tokens": self._max_tokens}
        if self._model:
            body["model"] = self._model
        if self.streaming:
            body["stream"] = True
        return orjson.dumps(body)
