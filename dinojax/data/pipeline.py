"""grain pipelines: shuffled, repeated, per-host sharded, deterministic given a seed, checkpointable
(the iterator state goes into the training checkpoint for exact resume)."""

import hashlib
import io
import threading

import grain
import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError

from dinojax.data import augment, images as image_lib
from dinojax.data.masking import BlockMasking, sample_masks
from dinojax.data.multi_crop import MultiCrop


class SkipCounter:
  """The distinct images dropped because they could not be decoded: each is logged and counted once,
  however often later epochs (or the read-ahead) meet it again. Its `state()` goes into every
  checkpoint, so a resumed run knows the same images."""

  def __init__(self):
    self._seen = set()
    self._lock = threading.Lock()

  @property
  def count(self) -> int:
    return len(self._seen)

  def skip(self, image, error: Exception) -> None:
    """Records `image` (a path, or the encoded bytes or array that failed) as unreadable."""
    name = image if isinstance(image, str) else (
        f"<in-memory image {hashlib.sha1(np.asarray(image).tobytes()).hexdigest()[:12]}>")
    with self._lock:
      new = name not in self._seen
      self._seen.add(name)
    if new:
      logging.warning("Skipping unreadable image %s: %s", name, error)

  def state(self) -> dict:
    return {"unreadable_images": sorted(self._seen)}

  def restore(self, state: dict) -> None:
    """The images of `state()` (a checkpoint's metadata; none in one written without them)."""
    with self._lock:
      self._seen = set(state.get("unreadable_images", ()))


def decode_image(image) -> np.ndarray:
  """A path, encoded bytes or an array -> uint8 RGB H×W×3."""
  if isinstance(image, (str, bytes)):
    with Image.open(image if isinstance(image, str) else io.BytesIO(image)) as img:
      return image_lib.to_rgb(np.asarray(img.convert("RGB")))
  return image_lib.to_rgb(np.asarray(image, np.uint8))


def _decoded_or_none(example, skipped: SkipCounter):
  try:
    return decode_image(example["image"])
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    skipped.skip(example["image"], e)
    return None


_REPLACEMENT_TRIES = 10


def readable_example(stream: grain.MapDataset, index: int, epoch: int, skipped: SkipCounter):
  """Element `index` of an endlessly repeated `stream` (`epoch` elements long) as (example, decoded
  uint8 RGB image); an unreadable image is counted and replaced by the element one epoch later, so
  batches keep their shape and the run keeps going."""
  for attempt in range(_REPLACEMENT_TRIES):
    example = stream[index + attempt * epoch]
    image = _decoded_or_none(example, skipped)
    if image is not None:
      return example, image
  raise ValueError(f"{_REPLACEMENT_TRIES} unreadable images in a row at element {index}; "
                   "is the data source readable at all?")


# Elements of an endless run. Not `len` of a `repeat(None)` (sys.maxsize): grain counts batches in
# floating point, and a batch of 1 (one image per device) rounds that count up to 2^63, which
# overflows.
ENDLESS = 2**62


def ssl_dataset(source, global_batch: int, multi_crop: MultiCrop, patch_size: int, seed: int,
                mask_ratio=(0.1, 0.5), mask_probability: float = 0.5, mask_group: int = 0,
                process_index: int = 0, process_count: int = 1, num_threads: int = 2,
                masks: bool = True):
  """This host's part of every global batch: {"global_crops" (b, 2, G, G, 3), "local_crops"
  (b, N, L, L, 3), "masks" (b, 2, P)} with b = global_batch / process_count (no "masks" with
  `masks=False`: distillation trains without masking).

  Element i of the run is a function of (seed, i) only, and global batch k is elements
  [k·B, (k+1)·B) split across hosts in order, so the data does not depend on how many hosts read
  it. iBOT mask ratios are stratified over groups of `mask_group` images (0: this host's batch; the
  official collate stratifies per GPU batch). An unreadable image is counted and replaced by the
  element one epoch later. Returns (IterDataset, SkipCounter).
  """
  if global_batch % process_count:
    raise ValueError(f"Global batch {global_batch} does not split over {process_count} processes.")
  local_batch = global_batch // process_count
  mask_group = mask_group or local_batch
  if local_batch % mask_group:
    raise ValueError(f"mask_group {mask_group} does not divide the per-host batch {local_batch}.")
  skipped = SkipCounter()
  grid = (multi_crop.global_size // patch_size,) * 2
  generator = BlockMasking(grid, max_num_patches=int(0.5 * grid[0] * grid[1]))
  stream = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  epoch = len(source)

  def crops(index, rng):
    return multi_crop(readable_example(stream, index, epoch, skipped)[1], rng)

  def add_masks(group, rng):
    n = group["global_crops"].shape[0]
    masks, _ = sample_masks(rng, 2 * n, grid, mask_ratio, mask_probability, generator)
    return {**group, "masks": masks.reshape(n, 2, -1)}

  def concat(groups):
    return {k: np.concatenate([g[k] for g in groups]) for k in groups[0]}

  ds = grain.MapDataset.range(ENDLESS).seed(seed).random_map(crops).batch(mask_group)
  if masks:
    ds = ds.random_map(add_masks)
  ds = ds.batch(local_batch // mask_group, batch_fn=concat)[process_index::process_count]
  return ds.to_iter_dataset(read_options(num_threads)), skipped


def classification_dataset(source, global_batch: int, size: int, seed: int,
                           scale: tuple[float, float] = (0.08, 1.0), process_index: int = 0,
                           process_count: int = 1, num_threads: int = 2):
  """This host's part of every global batch of labelled training images, {"image" (b, size, size, 3),
  "label" (b,)}: DINOv2's classification train transform (random resized crop, bicubic, of `scale`
  of the area; horizontal flip with p = 0.5; ImageNet normalisation), as its linear evaluation
  trains on. Endless, deterministic and host-independent as `ssl_dataset`, unreadable images
  counted and replaced the same way. Returns (IterDataset, SkipCounter)."""
  if global_batch % process_count:
    raise ValueError(f"Global batch {global_batch} does not split over {process_count} processes.")
  skipped = SkipCounter()
  stream = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  epoch = len(source)

  def crop(index, rng):
    example, image = readable_example(stream, index, epoch, skipped)
    view = augment.random_resized_crop(Image.fromarray(image), size, scale, rng)
    view = augment.horizontal_flip(view, rng)
    return {"image": image_lib.normalize(np.asarray(view)), "label": np.int32(example["label"])}

  ds = grain.MapDataset.range(ENDLESS).seed(seed).random_map(crop)
  ds = ds.batch(global_batch // process_count)[process_index::process_count]
  return ds.to_iter_dataset(read_options(num_threads)), skipped


def read_options(num_threads: int) -> grain.ReadOptions:
  # grain runs at most `prefetch_buffer_size` of its threads at once.
  return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(4, num_threads))


def eval_crop(image: np.ndarray, size: int, resize: int | None = None) -> np.ndarray:
  """The evaluation transform's geometry: resize (bicubic) the short side to `resize` (default
  size·256/224, the official k-NN and linear evaluations), then centre-crop size×size, pixel for
  pixel as torchvision's `Resize` and `CenterCrop` (`images.resize_center_crop`). uint8 in, uint8
  out."""
  return image_lib.resize_center_crop(image, size, resize or round(size * 256 / 224))


def eval_dataset(source, batch_size: int, size: int, process_index: int = 0, process_count: int = 1,
                 extra=None, skipped: SkipCounter | None = None, resize: int | None = None):
  """One pass, in order, of {"image" (b, size, size, 3), "label" (b,), "valid" (b,)}: the evaluation
  transform (`eval_crop` to `resize`, ImageNet normalisation). `extra(example) -> dict` adds fields (e.g.
  caption tokens). Every host yields the same number of batches (collectives stay in step);
  padding rows have valid=False, and so do unreadable images (counted in `skipped` and logged):
  an evaluation reports on the images it could read, rather than stopping a run."""
  if not len(source):
    raise ValueError("The evaluation source has no images.")
  skipped = skipped or SkipCounter()

  def transform(example):
    image = _decoded_or_none(example, skipped)
    if image is None:
      return None
    return {"image": image_lib.normalize(eval_crop(image, size, resize)),
            "label": np.int32(example["label"]), "valid": True, **(extra(example) if extra else {})}

  padding = {"image": np.zeros((size, size, 3), np.float32), "label": np.int32(0), "valid": False,
             **(extra(source[0]) if extra else {})}
  ds = grain.MapDataset.source(source)[process_index::process_count].map(transform)
  per_host = -(-len(source) // process_count)
  for start in range(0, per_host, batch_size):
    items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
    items = [padding if item is None else item for item in items]
    items += [padding] * (batch_size - len(items))
    yield {k: np.stack([it[k] for it in items]) for k in padding}
