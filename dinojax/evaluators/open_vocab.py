"""Open-vocabulary semantic segmentation, independent of the model: sliding-window inference that
turns any "window of pixels -> per-class score maps" function into score maps and labels for whole
images of any size, batched over many images.

The protocol is the training-free one of Talk2DINO, ProxyCLIP, FreeDA and the mmseg test pipeline
they share: resize so the short side is 448 (long side at most 2048), score 448×448 windows with
stride 224, average overlapping windows (mmseg's `slide_inference`), resize the averaged scores back
to the original image (bilinear), and take the argmax. A model plugs in through a `WindowScorer`; the
usual one compares dense patch features with text embeddings living in the same space
(`cosine_scores`) and upsamples them (`upsample_scores`).
"""

from typing import Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dinojax.ops.numerics import l2_normalize
from dinojax.ops.resize import linear_taps, torch_bilinear_resize

# (b, h, w, 3) float RGB in [0, 255] -> (b, N, h, w) scores, one map per class (or per query).
WindowScorer = Callable[[jax.Array], jax.Array]

SHORT_SIDE, LONG_SIDE, WINDOW, STRIDE = 448, 2048, 448, 224


# ---------------------------------------------------------------------------------------------------
# Dense features × text -> patch scores
# ---------------------------------------------------------------------------------------------------
def cosine_scores(patch_features: jax.Array, text_embeddings: jax.Array) -> jax.Array:
  """(b, N, h, w) cosine similarity of every patch feature (b, h, w, D) with every text embedding
  (N, D), both in the same space."""
  return jnp.einsum("bhwd,nd->bnhw", l2_normalize(patch_features.astype(jnp.float32)),
                    l2_normalize(text_embeddings.astype(jnp.float32)))


def upsample_scores(scores: jax.Array, size: tuple[int, int], align_corners: bool = True) -> jax.Array:
  """(b, N, h, w) -> (b, N, *size), PyTorch-exact bilinear (Talk2DINO aligns corners)."""
  out = torch_bilinear_resize(jnp.moveaxis(scores, 1, -1), size, align_corners=align_corners)
  return jnp.moveaxis(out, -1, 1)


# ---------------------------------------------------------------------------------------------------
# Geometry of the protocol
# ---------------------------------------------------------------------------------------------------
def rescale_size(height: int, width: int, short_side: int = SHORT_SIDE,
                 long_side: int = LONG_SIDE) -> tuple[int, int]:
  """mmcv's `imrescale` size for scale (long_side, short_side): the largest aspect-preserving size
  with short side ≤ short_side and long side ≤ long_side, rounded half up."""
  scale = min(long_side / max(height, width), short_side / min(height, width))
  return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
  """Bilinear resize (H, W, C) -> (*size, C) without antialiasing, as OpenCV's INTER_LINEAR that
  mmseg's test pipeline uses; float32 output (uint8 input is rounded back to integers as OpenCV does)."""
  out = bilinear_resize(image.astype(np.float32, copy=False), size, (0, 1), align_corners)
  return np.clip(np.round(out), 0, 255) if image.dtype == np.uint8 else out


def bilinear_resize(x: np.ndarray, size: tuple[int, int], axes: tuple[int, int],
                    align_corners: bool = False) -> np.ndarray:
  """PyTorch's bilinear resize (no antialiasing) of float32 `x` along `axes` to `size`, whatever
  the other axes hold (score maps resize as (N, H, W), without a transpose to channels-last).

  Two taps per output, not a dense (out, in) matrix per axis (O(in) multiply-adds per output). Each
  tap's gather is weighted in place: on maps this size every fresh array costs its page faults.
  """
  for axis, out_size in zip(axes, size):
    lo, hi, frac = linear_taps(x.shape[axis], out_size, align_corners)
    shape = [1] * x.ndim
    shape[axis] = -1
    frac = frac.astype(np.float32).reshape(shape)
    out = np.take(x, lo, axis)
    out *= 1 - frac
    upper = np.take(x, hi, axis)
    upper *= frac
    out += upper
    x = out
  return x


def window_grid(height: int, width: int, window: int = WINDOW,
                stride: int = STRIDE) -> list[tuple[int, int, int, int]]:
  """(y1, x1, y2, x2) of every window, as mmseg's `slide_inference`: a grid of stride `stride`, the
  last row/column shifted back to end at the border, windows clipped to images smaller than them."""
  if window <= 0 or stride <= 0:
    raise ValueError(f"window ({window}) and stride ({stride}) must be positive.")
  rows = max(height - window + stride - 1, 0) // stride + 1
  cols = max(width - window + stride - 1, 0) // stride + 1
  boxes = []
  for r in range(rows):
    for c in range(cols):
      y2, x2 = min(r * stride + window, height), min(c * stride + window, width)
      boxes.append((max(y2 - window, 0), max(x2 - window, 0), y2, x2))
  return boxes


# ---------------------------------------------------------------------------------------------------
# Sliding-window inference over many images
# ---------------------------------------------------------------------------------------------------
class _Canvas:
  """One image in flight: the windows' summed scores and how many windows covered each pixel."""

  def __init__(self, original_size, resized_size, num_windows):
    self.original_size, self.resized_size = original_size, resized_size
    self.sum, self.count = None, np.zeros(resized_size, np.float32)
    self.pending = num_windows

  def add(self, box, scores):
    y1, x1, y2, x2 = box
    if self.sum is None:
      self.sum = np.zeros((scores.shape[0], *self.resized_size), np.float32)
    self.sum[:, y1:y2, x1:x2] += scores
    self.count[y1:y2, x1:x2] += 1
    self.pending -= 1

  def result(self) -> np.ndarray:
    """The averaged scores resized back, (N, H, W); in place, so call it once."""
    self.sum /= self.count
    if self.resized_size == self.original_size:
      return self.sum
    return bilinear_resize(self.sum, self.original_size, (1, 2))


def sliding_window_scores(images: Iterable[np.ndarray], score_windows: WindowScorer, *,
                          short_side: int = SHORT_SIDE, long_side: int = LONG_SIDE,
                          window: int = WINDOW, stride: int = STRIDE, batch_size: int = 8,
                          sharding: jax.sharding.Sharding | None = None) -> Iterator[np.ndarray]:
  """Yields, in order, one (N, H, W) score map per RGB image (H, W, 3) at the image's own size.

  Windows of consecutive images are scored together, `batch_size` at a time (the last batch padded,
  so `score_windows` compiles once per window shape), placed with `sharding` when given (e.g. a
  batch sharding over the local devices). Images whose windows are done are yielded as soon as every
  earlier image is, so only a few images are held at once.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  canvases: dict[int, _Canvas] = {}
  queues: dict[tuple[int, int], list] = {}  # window shape -> [(image index, box, crop)]
  next_out = 0

  def run(shape):
    batch, queues[shape] = queues[shape][:batch_size], queues[shape][batch_size:]
    crops = np.stack([c for _, _, c in batch] + [np.zeros_like(batch[0][2])] * (batch_size - len(batch)))
    crops = jax.device_put(crops, sharding) if sharding is not None else crops
    scores = np.asarray(jax.device_get(score_windows(crops)), np.float32)
    for (index, box, _), s in zip(batch, scores):
      canvases[index].add(box, s)

  def finished():
    nonlocal next_out
    while next_out in canvases and canvases[next_out].pending == 0:
      yield canvases.pop(next_out).result()
      next_out += 1

  for index, image in enumerate(images):
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"Image {index}: expected an H×W×3 RGB array, got shape {image.shape}.")
    size = rescale_size(*image.shape[:2], short_side, long_side)
    resized = resize_image(image, size) if size != image.shape[:2] else image.astype(np.float32)
    boxes = window_grid(*size, window, stride)
    canvases[index] = _Canvas(image.shape[:2], size, len(boxes))
    for box in boxes:
      y1, x1, y2, x2 = box
      queues.setdefault((y2 - y1, x2 - x1), []).append((index, box, resized[y1:y2, x1:x2]))
    for shape in list(queues):
      while len(queues[shape]) >= batch_size:
        run(shape)
    # An image whose window shape is rare must not hold back the ones after it for long.
    if len(canvases) > 2 * batch_size:
      for shape in list(queues):
        while any(i == next_out for i, _, _ in queues[shape]):
          run(shape)
    yield from finished()
  for shape in list(queues):
    while queues[shape]:
      run(shape)
  yield from finished()


def scores_to_labels(scores: np.ndarray, background_threshold: float | None = None) -> np.ndarray:
  """(N, H, W) scores -> (H, W) int32 labels; with a threshold, pixels whose best score does not
  exceed it are -1 (Talk2DINO's background: a constant score map ranked first, so it wins ties)."""
  labels = scores.argmax(axis=0).astype(np.int32)
  if background_threshold is not None:
    labels = np.where(scores.max(axis=0) <= background_threshold, -1, labels)
  return labels


def reduce_queries(scores: np.ndarray, query_to_class: Sequence[int]) -> np.ndarray:
  """(Q, H, W) scores of queries (class names and their synonyms) -> (C, H, W) scores of classes,
  each class taking its best query at every pixel (ProxyCLIP's name files, "a; b; c" per class)."""
  query_to_class = np.asarray(query_to_class)
  if len(query_to_class) != scores.shape[0]:
    raise ValueError(f"{scores.shape[0]} score maps but {len(query_to_class)} queries.")
  return np.stack([scores[query_to_class == c].max(axis=0) for c in range(query_to_class.max() + 1)])
