"""Balanced hierarchical sampling (Vo et al., 2024, §4.3) and the `sample` step.

A target size is split over the top-level clusters as evenly as their sizes allow (every cluster gets
min(size, t) for the largest cut t that fits, the remainder going one point each to randomly chosen
larger clusters), then recursively over each cluster's children, down to the first level, where
points are taken at random (`r`) or closest to the centroid first (`c`). Small clusters are kept
whole and big ones are capped, which flattens the long-tailed concept distribution of web data.
"""

import os

import numpy as np
from absl import logging

from dinojax.curation import cluster, embed, store

STRATEGIES = ("r", "c")


def balanced_counts(sizes: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
  """Per-cluster counts summing to min(target, sum(sizes)): each min(size, t) or t + 1, where t is
  the largest cut with sum(min(sizes, t)) <= target."""
  sizes = np.asarray(sizes, np.int64)
  if target < 0:
    raise ValueError(f"target must be >= 0, got {target}.")
  if target >= sizes.sum():
    return sizes.copy()
  lo, hi = 0, int(sizes.max())
  while lo < hi:  # largest t with sum(min(sizes, t)) <= target
    mid = (lo + hi + 1) // 2
    if np.minimum(sizes, mid).sum() <= target:
      lo = mid
    else:
      hi = mid - 1
  counts = np.minimum(sizes, lo)
  remainder = int(target - counts.sum())
  if remainder:
    counts[rng.choice(np.flatnonzero(sizes > lo), remainder, replace=False)] += 1
  return counts


def _groups(parents: np.ndarray, num_parents: int) -> list[np.ndarray]:
  """Children of each parent cluster, in index order."""
  order = np.argsort(parents, kind="stable")
  return np.split(order, np.searchsorted(parents[order], np.arange(1, num_parents)))


def hierarchical_sampling(members: list[np.ndarray], parents: list[np.ndarray], target: int,
                          strategy: str, rng: np.random.Generator) -> np.ndarray:
  """Sorted ids of a balanced sample of `target` points.

  `members[c]`: ids of first-level cluster c, closest to its centroid first. `parents[j]`: for the
  clusters of level j+1, their cluster at level j+2, numbered 0..n-1 (empty list: one level).
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"Unknown sampling strategy {strategy!r}; choose 'r' (random) or 'c' (closest).")
  sizes = [np.array([len(m) for m in members], np.int64)]
  for p in parents:
    if len(p) != len(sizes[-1]):
      raise ValueError(f"A level has {len(sizes[-1])} clusters but {len(p)} parent labels.")
    sizes.append(np.bincount(p, weights=sizes[-1]).astype(np.int64))
  quotas = balanced_counts(sizes[-1], target, rng)
  for level in range(len(parents) - 1, -1, -1):  # split each cluster's quota over its children
    children_quota = np.zeros(len(sizes[level]), np.int64)
    for parent, children in enumerate(_groups(parents[level], len(quotas))):
      if len(children):
        children_quota[children] = balanced_counts(sizes[level][children], quotas[parent], rng)
    quotas = children_quota
  picked = []
  for ids, quota in zip(members, quotas):
    if quota:
      picked.append(ids[:quota] if strategy == "c" else rng.choice(ids, quota, replace=False))
  return np.sort(np.concatenate(picked)) if picked else np.zeros((0,), np.int64)


# ---------------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------------
def run(config, workdir: str, process_index: int = 0, process_count: int = 1) -> dict:
  """Samples `config.sample.target_size` pool images from the `cluster` step's hierarchy."""
  del process_index, process_count  # one cheap pass over ids; any process may run it
  hierarchy = cluster.load(workdir)
  rng = np.random.default_rng(config.sample.seed)
  selected = hierarchical_sampling(hierarchy["members"], hierarchy["parents"], config.sample.target_size,
                                   config.sample.strategy, rng)
  out_dir = os.path.join(workdir, "sample")
  embed.write_selection(out_dir, selected, config.data.pool, config.data.image_size)
  top = cluster.top_level_labels(hierarchy)
  per_cluster = np.bincount(top[np.searchsorted(hierarchy["ids"], selected)],
                            minlength=int(top.max()) + 1)
  summary = {"selected": int(len(selected)), "target_size": config.sample.target_size,
             "strategy": config.sample.strategy, "top_level_clusters": int(len(per_cluster)),
             "per_top_level_cluster": per_cluster.tolist()}
  store.write_json(os.path.join(out_dir, "summary.json"), summary)
  logging.info("sample: %d images from %d top-level clusters.", len(selected), len(per_cluster))
  return summary
