"""Reading single images: files of any format PIL reads, or scikit-image's bundled samples."""

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Colour photographs that ship inside scikit-image, usable offline.
SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry")


def to_rgb(image: np.ndarray) -> np.ndarray:
  """Grayscale -> 3 channels, RGBA -> RGB; anything else is an error that says what it got."""
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"Expected an H×W×{{1,3,4}} image, got shape {image.shape}.")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image[..., :3]


def load_image(source: str) -> np.ndarray:
  """An RGB uint8 H×W×3 array from an image file path or a scikit-image sample name."""
  if not os.path.exists(source):
    if source in SAMPLE_IMAGES:
      import skimage.data  # only for the sample names: not paid by every job that reads images
      return to_rgb(np.asarray(getattr(skimage.data, source)()))
    raise FileNotFoundError(f"No image file {source!r} (and not a sample name: {SAMPLE_IMAGES}).")
  try:
    with Image.open(source) as img:
      return to_rgb(np.asarray(img.convert("RGB")))
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"Cannot read image {source!r}: {e}") from e


def resize_to_patch_multiple(image: np.ndarray, short_side: int, patch_size: int) -> np.ndarray:
  """Resizes (bicubic) so the short side is about `short_side` and both sides are patch multiples."""
  h, w = image.shape[:2]
  scale = short_side / min(h, w)
  out_h = max(patch_size, round(h * scale / patch_size) * patch_size)
  out_w = max(patch_size, round(w * scale / patch_size) * patch_size)
  return np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BICUBIC))


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
  """PIL bicubic resize of the short side to `short_side`, as torchvision's `Resize(short_side)` on
  a PIL image: the long side is `int(short_side * long / short)` (truncated, not rounded), a square
  counts its width as the short side, and an image already at that size is returned as it is."""
  h, w = image.shape[:2]
  short, long = (w, h) if w <= h else (h, w)
  new_long = int(short_side * long / short)
  out_h, out_w = (new_long, short_side) if w <= h else (short_side, new_long)
  if (out_h, out_w) == (h, w):
    return image
  return np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BICUBIC))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central size×size crop as torchvision's `CenterCrop(size)`: offsets
  `int(round((side - size) / 2))` (Python's round, halves to even), and a side shorter than `size`
  first zero-padded to it, the odd pixel of padding after the image."""
  pad = [((size - n) // 2, (size - n + 1) // 2) if n < size else (0, 0) for n in image.shape[:2]]
  if any(before or after for before, after in pad):
    image = np.pad(image, pad + [(0, 0)] * (image.ndim - 2))
  top, left = (int(round((n - size) / 2.0)) for n in image.shape[:2])
  return image[top:top + size, left:left + size]


def resize_center_crop(image: np.ndarray, size: int, short_side: int) -> np.ndarray:
  """The official evaluation transform's geometry (`dinov2/data/transforms.py`
  `make_classification_eval_transform`: torchvision's `Resize(short_side, BICUBIC)` then
  `CenterCrop(size)` on PIL images), pixel for pixel."""
  return center_crop(resize_short_side(image, short_side), size)


# normalize's values for each (channel, uint8 level): a lookup is faster than the arithmetic on every
# pixel of every crop (docs/benchmarks.md), and bit-identical to it.
_NORMALIZED = ((np.arange(256, dtype=np.float32)[:, None] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).T.copy()


def normalize_pixels(x):
  """Float RGB in [0, 255] (NumPy or JAX, any leading shape) with ImageNet mean/std: `normalize`
  for images already resized in float inside a jitted function."""
  return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 RGB (..., 3) -> float32 with ImageNet mean/std, the normalisation every DINOv2 model expects."""
  if image.dtype != np.uint8 or image.shape[-1] != 3:
    raise ValueError(f"normalize expects uint8 RGB (..., 3), got {image.dtype} of shape {image.shape}.")
  out = np.empty(image.shape, np.float32)
  for c in range(3):
    np.take(_NORMALIZED[c], image[..., c], out=out[..., c])
  return out
