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

import functools
from typing import Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dinojax.ops.numerics import l2_normalize
from dinojax.ops.resize import bilinear_resize

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
  """(b, N, h, w) -> (b, N, *size), PyTorch-exact bilinear (Talk2DINO aligns corners); two taps per
  pixel, faster on a CPU than dense resize matrices (docs/benchmarks.md)."""
  return bilinear_resize(scores.astype(jnp.float32), size, (2, 3), align_corners)


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
  """One image in flight: its windows' score maps, left on the device until the last one is in."""

  def __init__(self, original_size, resized_size, num_windows):
    self.original_size, self.resized_size, self.num_windows = original_size, resized_size, num_windows
    self.windows = []

  @property
  def pending(self) -> int:
    return self.num_windows - len(self.windows)

  def add(self, box, scores):
    self.windows.append((box, scores))

  def result(self) -> jax.Array:
    """The averaged scores resized back, (N, H, W)."""
    boxes, scores = zip(*self.windows)
    return _average_windows(scores, boxes=boxes, resized_size=self.resized_size,
                            original_size=self.original_size)


@functools.partial(jax.jit, static_argnames=("boxes", "resized_size", "original_size"))
def _average_windows(scores, *, boxes, resized_size, original_size):
  """mmseg's `slide_inference` tail, on the device: windows summed over the resized image, divided
  by how many cover each pixel, resized back to the original (bilinear). Compiled per geometry."""
  total = jnp.zeros((scores[0].shape[0], *resized_size), jnp.float32)
  count = np.zeros(resized_size, np.float32)
  for (y1, x1, y2, x2), window in zip(boxes, scores):
    total = total.at[:, y1:y2, x1:x2].add(window)
    count[y1:y2, x1:x2] += 1
  total = total / count
  if resized_size == original_size:
    return total
  return bilinear_resize(total, original_size, (1, 2))


def sliding_window_scores(images: Iterable[np.ndarray], score_windows: WindowScorer, *,
                          short_side: int = SHORT_SIDE, long_side: int = LONG_SIDE,
                          window: int = WINDOW, stride: int = STRIDE, batch_size: int = 8,
                          sharding: jax.sharding.Sharding | None = None) -> Iterator[np.ndarray]:
  """Yields, in order, one (N, H, W) score map per RGB image (H, W, 3) at the image's own size, as
  a jax.Array on the device (transferring 21 maps per image would cost a GPU more than scoring).

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
    scores = score_windows(crops).astype(jnp.float32)
    for i, (index, box, _) in enumerate(batch):
      canvases[index].add(box, scores[i])

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


def scores_to_labels(scores, background_threshold: float | None = None) -> np.ndarray:
  """(N, H, W) scores (NumPy or on the device) -> (H, W) int32 labels, computed where the scores
  are; with a threshold, pixels whose best score does not exceed it are -1 (Talk2DINO's background:
  a constant score map ranked first, so it wins ties)."""
  labels = jnp.argmax(scores, axis=0).astype(jnp.int32)
  if background_threshold is not None:
    labels = jnp.where(jnp.max(scores, axis=0) <= background_threshold, -1, labels)
  return np.asarray(labels)


def reduce_queries(scores, query_to_class: Sequence[int]) -> jax.Array:
  """(Q, H, W) scores of queries (class names and their synonyms) -> (C, H, W) scores of classes,
  each class taking its best query at every pixel (ProxyCLIP's name files, "a; b; c" per class);
  computed on the device."""
  query_to_class = np.asarray(query_to_class)
  if len(query_to_class) != scores.shape[0]:
    raise ValueError(f"{scores.shape[0]} score maps but {len(query_to_class)} queries.")
  return jnp.stack([scores[query_to_class == c].max(axis=0) for c in range(query_to_class.max() + 1)])
