"""Decode an untrusted image and turn it into the classifier's input tensor.

Everything is bounded before pixels are decoded: the encoded size (by the body
limit), the format (an allow-list), the pixel count read from the header, which
stops decompression bombs, and the aspect ratio, which bounds the resized image
(a 1x200000 PNG of a few hundred bytes would otherwise be resized to 256 x 51
million pixels). JPEGs are decoded at a reduced scale when the image is much
larger than the 256-pixel short side needed. 16-bit images (``I;16`` and friends)
are scaled to 8 bits, not clipped to white.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from inferno.errors import BadRequest

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
RESIZE_SHORT = 256
CROP = 224
#: the default of ``--image-max-aspect-ratio``: longer side / shorter side
MAX_ASPECT_RATIO = 32.0
#: modes holding more than 8 bits per sample, and the largest value each may hold
WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 65535}
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def load_image(raw: bytes, max_pixels: int, max_aspect: float = MAX_ASPECT_RATIO) -> Image.Image:
    """The decoded RGB image, or ``BadRequest`` for anything that is not a sane image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=FORMATS)
            width, height = image.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise BadRequest(
                    f"image is {width}x{height}; at most {max_pixels} pixels are accepted", param="data"
                )
            if max(width, height) > max_aspect * min(width, height):
                raise BadRequest(
                    f"image is {width}x{height}; its sides may differ by a factor of {max_aspect:g} at most",
                    param="data",
                )
            if image.format == "JPEG":
                image.draft("RGB", (RESIZE_SHORT, RESIZE_SHORT))
            image.seek(0)
            return to_rgb(image)
    except BadRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadRequest(
            f"image has too many pixels; at most {max_pixels} are accepted", param="data"
        ) from None
    except UnidentifiedImageError:
        raise BadRequest("data is not a supported image (JPEG, PNG, WebP, GIF, BMP)", param="data") from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise BadRequest("the image is corrupt or truncated", param="data") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; wider samples are scaled down (``convert`` would clip them at 255)."""
    top = WIDE_MODES.get(image.mode)
    if top is None:
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float32)
    gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def resized_size(width: int, height: int, max_aspect: float = MAX_ASPECT_RATIO) -> tuple[int, int]:
    """The size the short-side-256 resize gives, refused before anything is allocated
    when it would be more than an image of ``max_aspect`` gives."""
    scale = RESIZE_SHORT / min(width, height)
    size = (max(CROP, round(width * scale)), max(CROP, round(height * scale)))
    if size[0] * size[1] > RESIZE_SHORT * (RESIZE_SHORT * max_aspect + 1):
        raise BadRequest(
            f"image is {width}x{height}; its sides may differ by a factor of {max_aspect:g} at most",
            param="data",
        )
    return size


def preprocess(image: Image.Image, max_aspect: float = MAX_ASPECT_RATIO) -> npt.NDArray[np.float32]:
    """Short side to 256 (bilinear), centre crop 224, scale to [0,1], ImageNet mean/std; CHW."""
    size = resized_size(*image.size, max_aspect)
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left = (size[0] - CROP) // 2
    top = (size[1] - CROP) // 2
    cropped = resized.crop((left, top, left + CROP, top + CROP))
    array = np.asarray(cropped, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((array - MEAN) / STD).astype(np.float32)
