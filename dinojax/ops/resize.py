"""Bicubic resizing that reproduces PyTorch's `F.interpolate(mode="bicubic", align_corners=False)`.

DINOv2 checkpoints store their position embeddings at the pre-training grid and resize them to the
input grid with PyTorch's bicubic. Matching it matters for parity: PyTorch uses Keys' a = -0.75 with
replicated borders, while `jax.image.resize` uses a = -0.5; with `antialias=True` PyTorch switches to
PIL's filter (a = -0.5, support widened when shrinking, weights renormalised at the borders).

Both are separable linear maps, so each axis becomes a small (out, in) matrix built in NumPy from the
static shapes and applied with an einsum.

Bilinear (`bilinear_resize`, PyTorch's `mode="bilinear"`, for images, score maps and masks) needs only
two taps per output, so it gathers them instead of multiplying by a mostly-zero matrix.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _source_scale(in_size: int, out_size: int, scale_factor: float | None) -> float:
  # PyTorch maps output to input coordinates with 1/scale_factor when one is given, else in/out.
  if scale_factor is not None and scale_factor > 0:
    return 1.0 / scale_factor
  return in_size / out_size


def bicubic_weights(in_size: int, out_size: int, scale_factor: float | None = None,
                    antialias: bool = False) -> np.ndarray:
  """The (out_size, in_size) matrix of one axis of PyTorch's bicubic interpolation."""
  scale = _source_scale(in_size, out_size, scale_factor)
  weights = np.zeros((out_size, in_size), np.float64)
  if not antialias:
    # Source coordinates in float32, as PyTorch computes them, so rounding matches too.
    f32 = np.float32
    src = (f32(scale) * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5)).astype(np.float64)
    floor = np.floor(src)
    t = src - floor
    taps = (_cubic(t + 1, -0.75), _cubic(t, -0.75), _cubic(1 - t, -0.75), _cubic(2 - t, -0.75))
    for offset, tap in zip((-1, 0, 1, 2), taps):
      idx = np.clip(floor.astype(np.int64) + offset, 0, in_size - 1)
      np.add.at(weights, (np.arange(out_size), idx), tap)
    return weights
  # PIL-style antialiased filter, as in PyTorch's `_upsample_bicubic2d_aa`.
  support = 2.0 * scale if scale >= 1.0 else 2.0
  inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
  for i in range(out_size):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    taps = _cubic((np.arange(lo, hi) - center + 0.5) * inv_scale, -0.5)
    weights[i, lo:hi] = taps / taps.sum()
  return weights


def output_size(in_size: int, size: int | None, scale_factor: float | None) -> int:
  """The output length PyTorch gives for an explicit size or a scale factor."""
  if size is not None:
    return size
  return int(math.floor(in_size * scale_factor))


def torch_bicubic_resize(x: jax.Array, size: tuple[int, int] | None = None,
                         scale_factor: tuple[float, float] | None = None,
                         antialias: bool = False) -> jax.Array:
  """Resizes the two spatial axes of an (..., H, W, C) array like PyTorch's bicubic `interpolate`.

  Give either `size` (out_h, out_w) or `scale_factor` (s_h, s_w); with a scale factor the output is
  floor(in * s) and source coordinates use 1/s, exactly as PyTorch does.
  """
  if (size is None) == (scale_factor is None):
    raise ValueError("torch_bicubic_resize needs exactly one of `size` and `scale_factor`.")
  in_h, in_w = x.shape[-3], x.shape[-2]
  s_h, s_w = scale_factor if scale_factor is not None else (None, None)
  out_h = output_size(in_h, size and size[0], s_h)
  out_w = output_size(in_w, size and size[1], s_w)
  w_h = jnp.asarray(bicubic_weights(in_h, out_h, s_h, antialias), jnp.float32)
  w_w = jnp.asarray(bicubic_weights(in_w, out_w, s_w, antialias), jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,...hwc->...owc", w_h, x.astype(jnp.float32), precision=hi)
  return jnp.einsum("pw,...owc->...opc", w_w, x, precision=hi)


def linear_taps(in_size: int, out_size: int, align_corners: bool) -> tuple[np.ndarray, ...]:
  """One axis of PyTorch's bilinear interpolation as two taps per output: source indices (lo, hi)
  and the weight of hi (float64; lo's is 1 - it)."""
  if align_corners:
    src = np.arange(out_size) * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
  else:
    src = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  return lo, hi, src - lo


def bilinear_resize(x, size: tuple[int, int], axes: tuple[int, int], align_corners: bool = False):
  """PyTorch's bilinear `interpolate` (no antialiasing) of float `x` along `axes` to `size`, whatever
  the other axes hold (images as (H, W, C), score maps as (N, H, W), no transposes). Two taps per
  output, not a dense (out, in) matrix per axis (O(in) multiply-adds per output). NumPy in, NumPy
  out; a jax.Array (or a tracer) in, a jax.Array out.
  """
  xp = jnp if isinstance(x, jax.Array) else np
  for axis, out_size in zip(axes, size):
    lo, hi, frac = linear_taps(x.shape[axis], out_size, align_corners)
    shape = [1] * x.ndim
    shape[axis] = -1
    frac = frac.astype(np.float32).reshape(shape)
    x = xp.take(x, lo, axis) * (1 - frac) + xp.take(x, hi, axis) * frac
  return x
