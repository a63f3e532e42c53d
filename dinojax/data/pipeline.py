"""grain pipelines: shuffled, repeated, per-host sharded, deterministic given a seed, checkpointable
(the iterator state goes into the training checkpoint for exact resume)."""

import threading

import grain
import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError

from dinojax.data import images as image_lib
from dinojax.data.masking import BlockMasking, sample_masks
from dinojax.data.multi_crop import MultiCrop


class SkipCounter:
  """Counts (and logs) examples dropped because their image could not be decoded."""

  def __init__(self):
    self.count = 0
    self._lock = threading.Lock()

  def skip(self, what: str, error: Exception) -> None:
    with self._lock:
      self.count += 1
    logging.warning("Skipping unreadable image %s: %s", what, error)


def decode_image(image) -> np.ndarray:
  """A path, encoded bytes or an array -> uint8 RGB H×W×3."""
  if isinstance(image, (str, bytes)):
    import io
    with Image.open(image if isinstance(image, str) else io.BytesIO(image)) as img:
      return image_lib.to_rgb(np.asarray(img.convert("RGB")))
  return image_lib.to_rgb(np.asarray(image, np.uint8))


def _decoded_or_none(example, skipped: SkipCounter):
  try:
    return decode_image(example["image"])
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    what = example["image"] if isinstance(example["image"], str) else "<in-memory>"
    skipped.skip(what, e)
    return None


def mask_upper_bound(batch: int, num_patches: int, mask_ratio, mask_probability) -> int:
  """The static bound `sample_masks` reports for one host's batch of global crops."""
  n = int(batch * mask_probability)
  edges = np.linspace(*mask_ratio, n + 1)
  return int(sum(int(num_patches * hi) for hi in edges[1:]))


def ssl_dataset(source, batch_size: int, multi_crop: MultiCrop, patch_size: int, seed: int,
                mask_ratio=(0.1, 0.5), mask_probability: float = 0.5, process_index: int = 0,
                process_count: int = 1, num_threads: int = 2):
  """Batches of {"global_crops" (b, 2, G, G, 3), "local_crops" (b, N, L, L, 3), "masks" (b, 2, P)}
  for this host; returns (IterDataset, SkipCounter)."""
  skipped = SkipCounter()
  grid = (multi_crop.global_size // patch_size,) * 2
  generator = BlockMasking(grid, max_num_patches=int(0.5 * grid[0] * grid[1]))

  def crops(example, rng):
    image = _decoded_or_none(example, skipped)
    return None if image is None else multi_crop(image, rng)

  def add_masks(batch, rng):
    b = batch["global_crops"].shape[0]
    masks, _ = sample_masks(rng, 2 * b, grid, mask_ratio, mask_probability, generator)
    return {**batch, "masks": masks.reshape(b, 2, -1)}

  ds = grain.MapDataset.source(source)[process_index::process_count]
  ds = ds.seed(seed).shuffle().repeat(None).random_map(crops)
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * batch_size)
  ds = ds.to_iter_dataset(read, allow_nones=True).filter(lambda x: x is not None)
  ds = ds.batch(batch_size, drop_remainder=True).random_map(add_masks, seed=seed + 1)
  return ds, skipped


def eval_dataset(source, batch_size: int, size: int, process_index: int = 0, process_count: int = 1):
  """One pass, in order, of {"image" (b, size, size, 3), "label" (b,), "valid" (b,)}: the evaluation
  transform (resize short side to size·256/224, centre crop). Every host yields the same number of
  batches (collectives stay in step); padding rows have valid=False."""

  def transform(example):
    image = decode_image(example["image"])
    pil = Image.fromarray(image)
    short = round(size * 256 / 224)
    w, h = pil.size
    scale = short / min(w, h)
    pil = pil.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = pil.size
    left, top = (w - size) // 2, (h - size) // 2
    crop = np.asarray(pil.crop((left, top, left + size, top + size)))
    return {"image": image_lib.normalize(crop), "label": np.int32(example["label"]), "valid": True}

  ds = grain.MapDataset.source(source)[process_index::process_count].map(transform)
  per_host = -(-len(source) // process_count)
  padding = {**ds[0], "valid": False}
  for start in range(0, per_host, batch_size):
    items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
    items += [padding] * (batch_size - len(items))
    yield {k: np.stack([it[k] for it in items]) for k in padding}
