"""iBOT block-wise masking of global-crop patches, as DINOv2's `MaskingGenerator` and collate do.

Masks are drawn on the host with a NumPy Generator so a seed fixes them exactly (and resumes
exactly); they are small (batch × patches booleans) and travel with the batch.
"""

import math

import numpy as np


class BlockMasking:
  """Random rectangles (aspect in [min_aspect, 1/min_aspect], area ≥ `min_num_patches`) added until
  the requested number of patches is masked or no rectangle fits."""

  def __init__(self, grid: tuple[int, int], max_num_patches: int | None = None,
               min_num_patches: int = 4, min_aspect: float = 0.3, max_aspect: float | None = None):
    self.height, self.width = grid
    self.max_num_patches = max_num_patches if max_num_patches is not None else self.height * self.width
    self.min_num_patches = min_num_patches
    self.log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))

  def _add_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
    for _ in range(10):  # attempts, as the official generator
      # Like Python's random.uniform: a budget below the minimum area still gives a value between.
      area = self.min_num_patches + (budget - self.min_num_patches) * rng.random()
      aspect = math.exp(rng.uniform(*self.log_aspect))
      h = int(round(math.sqrt(area * aspect)))
      w = int(round(math.sqrt(area / aspect)))
      if w < self.width and h < self.height:
        top = int(rng.integers(0, self.height - h + 1))
        left = int(rng.integers(0, self.width - w + 1))
        block = mask[top:top + h, left:left + w]
        new = h * w - int(block.sum())
        if 0 < new <= budget:
          block[...] = True
          return new
    return 0

  def __call__(self, num_masked: int, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((self.height, self.width), bool)
    count = 0
    while count < num_masked:
      added = self._add_block(mask, min(num_masked - count, self.max_num_patches), rng)
      if added == 0:
        break
      count += added
    return mask


def mask_upper_bound(batch: int, num_patches: int, mask_ratio=(0.1, 0.5),
                     mask_probability: float = 0.5) -> int:
  """The most patches `sample_masks` can mask in `batch` crops: static given the batch, so a jitted
  step can gather masked patches into a fixed-size buffer (the official `upperbound`)."""
  edges = np.linspace(*mask_ratio, int(batch * mask_probability) + 1)
  return int(sum(int(num_patches * hi) for hi in edges[1:]))


def sample_masks(rng: np.random.Generator, batch: int, grid: tuple[int, int],
                 mask_ratio: tuple[float, float] = (0.1, 0.5), mask_probability: float = 0.5,
                 generator: BlockMasking | None = None) -> tuple[np.ndarray, int]:
  """Masks for `batch` global crops, as the official collate: int(batch · probability) of them get a
  ratio from consecutive slices of linspace(mask_ratio), the rest none, in shuffled order.

  Returns (masks (batch, patches) bool, `mask_upper_bound` of the batch).
  """
  num_patches = grid[0] * grid[1]
  generator = generator or BlockMasking(grid, max_num_patches=int(0.5 * num_patches))
  num_masked_samples = int(batch * mask_probability)
  edges = np.linspace(*mask_ratio, num_masked_samples + 1)
  masks = [generator(int(num_patches * rng.uniform(lo, hi)), rng)
           for lo, hi in zip(edges[:-1], edges[1:])]
  masks += [np.zeros(grid, bool)] * (batch - num_masked_samples)
  order = rng.permutation(batch)
  upper_bound = mask_upper_bound(batch, num_patches, mask_ratio, mask_probability)
  return np.stack([masks[i] for i in order]).reshape(batch, num_patches), upper_bound
