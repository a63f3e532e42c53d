"""DINOv2's image augmentations on PIL images, with torchvision's sampling rules, driven by a NumPy
Generator so that every crop is a deterministic function of the pipeline seed and element index."""

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

Rng = np.random.Generator


def random_resized_crop(image: Image.Image, size: int, scale: tuple[float, float], rng: Rng,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
  """torchvision's RandomResizedCrop (bicubic, as DINOv2): up to 10 tries at a random area and
  aspect ratio, else a centre crop at the nearest allowed aspect ratio."""
  width, height = image.size
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      break
  else:
    in_ratio = width / height
    if in_ratio < ratio[0]:
      w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
      w, h = int(round(height * ratio[1])), height
    else:
      w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
  return image.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))


def _adjust_hue(image: Image.Image, factor: float) -> Image.Image:
  h, s, v = image.convert("HSV").split()
  h = Image.fromarray((np.asarray(h, np.int16) + int(round(factor * 255))).astype(np.uint8), "L")
  return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(image: Image.Image, rng: Rng, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.2, hue: float = 0.1) -> Image.Image:
  """torchvision's ColorJitter: the four adjustments in a random order, factors drawn uniformly."""
  factors = [rng.uniform(max(0, 1 - brightness), 1 + brightness),
             rng.uniform(max(0, 1 - contrast), 1 + contrast),
             rng.uniform(max(0, 1 - saturation), 1 + saturation),
             rng.uniform(-hue, hue)]
  ops = [lambda im, f: ImageEnhance.Brightness(im).enhance(f),
         lambda im, f: ImageEnhance.Contrast(im).enhance(f),
         lambda im, f: ImageEnhance.Color(im).enhance(f),
         _adjust_hue]
  for i in rng.permutation(4):
    image = ops[i](image, factors[i])
  return image


def color_distortion(image: Image.Image, rng: Rng) -> Image.Image:
  """DINOv2's colour step: jitter (0.4, 0.4, 0.2, 0.1) with p = 0.8, then grayscale with p = 0.2."""
  if rng.random() < 0.8:
    image = color_jitter(image, rng)
  if rng.random() < 0.2:
    image = image.convert("L").convert("RGB")
  return image


def gaussian_blur(image: Image.Image, p: float, rng: Rng, sigma: tuple[float, float] = (0.1, 2.0)):
  """Blur with probability p, sigma uniform in [0.1, 2] (PIL's Gaussian for torchvision's 9-tap)."""
  if rng.random() < p:
    image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*sigma)))
  return image


def solarize(image: Image.Image, p: float, rng: Rng) -> Image.Image:
  if rng.random() < p:
    image = ImageOps.solarize(image, threshold=128)
  return image


def horizontal_flip(image: Image.Image, rng: Rng) -> Image.Image:
  return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image
