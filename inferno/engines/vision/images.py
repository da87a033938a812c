"""Decode an untrusted image and turn it into the classifier's input tensor.

Everything is bounded before pixels are decoded: the encoded size (by the body
limit), the format (an allow-list), and the pixel count read from the header,
which stops decompression bombs. JPEGs are decoded at a reduced scale when the
image is much larger than the 256-pixel short side needed.
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
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def load_image(raw: bytes, max_pixels: int) -> Image.Image:
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
            if image.format == "JPEG":
                image.draft("RGB", (RESIZE_SHORT, RESIZE_SHORT))
            image.seek(0)
            return image.convert("RGB")
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


def preprocess(image: Image.Image) -> npt.NDArray[np.float32]:
    """Short side to 256 (bilinear), centre crop 224, scale to [0,1], ImageNet mean/std; CHW."""
    width, height = image.size
    scale = RESIZE_SHORT / min(width, height)
    size = (max(CROP, round(width * scale)), max(CROP, round(height * scale)))
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left = (size[0] - CROP) // 2
    top = (size[1] - CROP) // 2
    cropped = resized.crop((left, top, left + CROP, top + CROP))
    array = np.asarray(cropped, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((array - MEAN) / STD).astype(np.float32)
