"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, "Single-Stage Semantic Segmentation from
Image Labels", CVPR 2020, §3.2): class score maps are repeatedly replaced by an average of their
neighbours, weighted by how alike the neighbours' colours are. Talk2DINO's evaluation uses it with
10 iterations over dilations (1, 2, 4, 8, 12, 24)."""

import jax
import jax.numpy as jnp
import numpy as np

from dinojax.ops.resize import bilinear_resize

TALK2DINO_ITERATIONS = 10
TALK2DINO_DILATIONS = (1, 2, 4, 8, 12, 24)

_RING = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _offsets(dilations, centre: bool = False) -> np.ndarray:
  """(P, 2) pixel offsets of the 8 (or, with `centre`, 9) cells of each dilated 3×3 window."""
  cells = _RING + ((0, 0),) if centre else _RING
  return np.array([(dy * d, dx * d) for d in dilations for dy, dx in cells], np.int32)


def _shifter(x: jax.Array, margin: int):
  """offset -> x shifted by it (the neighbour at that offset of every pixel), borders replicated.
  Padding once by the largest dilation and slicing is the same as padding by each dilation."""
  padded = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(margin, margin)] * 2, mode="edge")
  lead = (0,) * (x.ndim - 2)
  return lambda offset: jax.lax.dynamic_slice(padded, (*lead, margin + offset[0], margin + offset[1]),
                                              x.shape)


def pixel_affinities(image: jax.Array, dilations=TALK2DINO_DILATIONS) -> jax.Array:
  """(B, P, H, W) weights over the P = 8·len(dilations) neighbours of each pixel, summing to 1: a
  softmax of -|I_i - I_j| / (0.1 σ_i), σ_i the local standard deviation of the colour around i
  (over the 3×3 dilated windows), averaged over colour channels. image (B, H, W, C)."""
  x = jnp.moveaxis(image.astype(jnp.float32), -1, 1)  # (B, C, H, W)
  shift = _shifter(x, max(dilations))
  window = jnp.asarray(_offsets(dilations, centre=True))
  n = window.shape[0]
  mean = jax.lax.fori_loop(0, n, lambda p, acc: acc + shift(window[p]), jnp.zeros_like(x)) / n
  var = jax.lax.fori_loop(0, n, lambda p, acc: acc + (shift(window[p]) - mean) ** 2, jnp.zeros_like(x))
  scale = 1e-8 + 0.1 * jnp.sqrt(var / (n - 1))
  logits = jax.vmap(lambda off: (-jnp.abs(x - shift(off)) / scale).mean(axis=1), out_axes=1)(
      jnp.asarray(_offsets(dilations)))
  return jax.nn.softmax(logits, axis=1)


def pamr(image: jax.Array, masks: jax.Array, iterations: int = TALK2DINO_ITERATIONS,
         dilations=TALK2DINO_DILATIONS) -> jax.Array:
  """Refined masks (B, N, H, W). image (B, H, W, C) in any consistent scale (Talk2DINO passes RGB in
  [0, 255]); masks (B, N, h, w) are first resized to the image (bilinear, corners aligned)."""
  b, h, w = image.shape[0], image.shape[1], image.shape[2]
  if masks.shape[0] != b:
    raise ValueError(f"pamr: {masks.shape[0]} masks for {b} images.")
  if masks.shape[-2:] != (h, w):
    masks = bilinear_resize(masks, (h, w), (2, 3), align_corners=True)
  weights = pixel_affinities(image, dilations)  # (B, P, H, W)
  ring = jnp.asarray(_offsets(dilations))

  def step(_, m):
    # A running sum over neighbours, not a (B, N, P, H, W) stack: P is 48 at Talk2DINO's settings.
    shift = _shifter(m, max(dilations))
    return jax.lax.fori_loop(0, ring.shape[0], lambda p, acc: acc + shift(ring[p]) * weights[:, p, None],
                             jnp.zeros_like(m))

  return jax.lax.fori_loop(0, iterations, step, masks.astype(jnp.float32))
