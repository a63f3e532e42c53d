"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, "Single-Stage Semantic Segmentation from
Image Labels", CVPR 2020, §3.2): class score maps are repeatedly replaced by an average of their
neighbours, weighted by how alike the neighbours' colours are. Talk2DINO's evaluation uses it with
10 iterations over dilations (1, 2, 4, 8, 12, 24)."""

import jax
import jax.numpy as jnp

from dinojax.ops.resize import torch_bilinear_resize

TALK2DINO_ITERATIONS = 10
TALK2DINO_DILATIONS = (1, 2, 4, 8, 12, 24)

_RING = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _neighbours(x: jax.Array, dilations, centre: bool = False) -> list[jax.Array]:
  """The 8 (or, with `centre`, 9) neighbours of every pixel of x (..., H, W) at each dilation, with
  borders replicated: a list of arrays shaped like x."""
  h, w = x.shape[-2:]
  offsets = _RING + ((0, 0),) if centre else _RING
  out = []
  for d in dilations:
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(d, d), (d, d)], mode="edge")
    out += [padded[..., d + dy * d:d + dy * d + h, d + dx * d:d + dx * d + w] for dy, dx in offsets]
  return out


def pixel_affinities(image: jax.Array, dilations=TALK2DINO_DILATIONS) -> jax.Array:
  """(B, P, H, W) weights over the P = 8·len(dilations) neighbours of each pixel, summing to 1: a
  softmax of -|I_i - I_j| / (0.1 σ_i), σ_i the local standard deviation of the colour around i
  (over the 3×3 dilated windows), averaged over colour channels. image (B, H, W, C)."""
  x = jnp.moveaxis(image.astype(jnp.float32), -1, 1)  # (B, C, H, W)
  local = jnp.stack(_neighbours(x, dilations, centre=True), axis=2)
  sigma = jnp.std(local, axis=2, ddof=1, keepdims=True)
  diffs = jnp.abs(x[:, :, None] - jnp.stack(_neighbours(x, dilations), axis=2))
  logits = (-diffs / (1e-8 + 0.1 * sigma)).mean(axis=1)
  return jax.nn.softmax(logits, axis=1)


def pamr(image: jax.Array, masks: jax.Array, iterations: int = TALK2DINO_ITERATIONS,
         dilations=TALK2DINO_DILATIONS) -> jax.Array:
  """Refined masks (B, N, H, W). image (B, H, W, C) in any consistent scale (Talk2DINO passes RGB in
  [0, 255]); masks (B, N, h, w) are first resized to the image (bilinear, corners aligned)."""
  b, h, w = image.shape[0], image.shape[1], image.shape[2]
  if masks.shape[0] != b:
    raise ValueError(f"pamr: {masks.shape[0]} masks for {b} images.")
  if masks.shape[-2:] != (h, w):
    masks = jnp.moveaxis(torch_bilinear_resize(jnp.moveaxis(masks, 1, -1), (h, w), align_corners=True), -1, 1)
  weights = pixel_affinities(image, dilations)[:, None]  # (B, 1, P, H, W)

  def step(_, m):
    # A sum of shifted copies rather than one (B, N, P, H, W) stack: P is 48 at Talk2DINO's settings.
    return sum(n * weights[:, :, p] for p, n in enumerate(_neighbours(m, dilations)))

  return jax.lax.fori_loop(0, iterations, step, masks.astype(jnp.float32))
