"""The `cluster` step: hierarchical k-means of the curated-so-far pool (Vo et al., 2024, §4).

Level 1 clusters the pool's embeddings with mini-batch k-means streamed over the shards (the only
level that touches the pool); every process then assigns its own shards to the level-1 centroids.
Levels 2.. cluster the previous level's centroids in memory, with resampling (`kmeans.py`). The
`sample` step reads the resulting hierarchy.

Input (`config.cluster.input`): `dedup` (the deduplicated pool, as in Vo et al.) or `retrieve`
(the DINOv2 retrieval result).
"""

import os

import numpy as np
from absl import logging

from dinojax.curation import dedup, embed, kmeans, retrieve, store

INPUTS = ("dedup", "retrieve")


def input_ids(config, workdir: str) -> np.ndarray:
  if config.cluster.input == "dedup":
    return dedup.load_keep(workdir)
  if config.cluster.input == "retrieve":
    return retrieve.load_selected(workdir)
  raise ValueError(f"Unknown cluster.input {config.cluster.input!r}; choose one of {INPUTS}.")


def check_levels(c) -> None:
  lengths = {len(c.n_clusters), len(c.resampling_steps), len(c.sample_sizes)}
  if len(lengths) != 1 or not c.n_clusters:
    raise ValueError("cluster.n_clusters, resampling_steps and sample_sizes need one entry per level; "
                     f"got {list(c.n_clusters)}, {list(c.resampling_steps)}, {list(c.sample_sizes)}.")
  if c.sample_sizes[0] > 1 and c.resampling_steps[0] > 0:
    raise ValueError("Resampling at level 1 would need the whole pool in memory; set "
                     "cluster.sample_sizes[0] = 1 (the official 4-level config does not resample there "
                     "either).")
  if any(b >= a for a, b in zip(c.n_clusters, c.n_clusters[1:])):
    raise ValueError(f"cluster.n_clusters must decrease level by level, got {list(c.n_clusters)}.")


def _paths(workdir: str):
  out = os.path.join(workdir, "cluster")
  return out, os.path.join(out, "parts"), os.path.join(out, "level1_centroids.npy")


def map_phase(config, workdir: str, process_index: int, process_count: int) -> None:
  """Level-1 centroids (fitted once, the first published copy wins), then this process's shards'
  assignments to them."""
  c = config.cluster
  check_levels(c)
  pool = store.EmbeddingShards(embed.collection_dir(workdir, "pool")).check_complete("cluster")
  ids = input_ids(config, workdir)
  out_dir, parts_dir, centroids_path = _paths(workdir)
  os.makedirs(parts_dir, exist_ok=True)
  if os.path.exists(centroids_path):
    centroids = np.load(centroids_path)
  else:
    logging.info("cluster: mini-batch k-means with %d clusters over %d images.", c.n_clusters[0], len(ids))
    batches = kmeans.minibatches(pool, ids, c.batch_size, c.epochs, config.seed)
    centroids = store.save_once(centroids_path, kmeans.fit_streaming(batches, c.n_clusters[0], config.seed))
  for s in store.owned(pool.num_shards, process_index, process_count):
    part = os.path.join(parts_dir, f"assign-{s:05d}.npz")
    if not os.path.exists(part):
      shard_ids, vectors = pool.load(s, ids)
      labels, sqdist = kmeans.assign(vectors, centroids)
      store.atomic_savez(part, ids=shard_ids, labels=labels, sqdist=sqdist)


def reduce_phase(config, workdir: str) -> dict | None:
  """Upper levels and `cluster/hierarchy.npz`; None while other processes' parts are missing."""
  c = config.cluster
  pool = store.EmbeddingShards(embed.collection_dir(workdir, "pool"))
  out_dir, parts_dir, centroids_path = _paths(workdir)
  parts = [os.path.join(parts_dir, f"assign-{s:05d}.npz") for s in range(pool.num_shards)]
  missing = store.missing_parts(parts)
  if missing:
    logging.info("cluster: waiting for %d parts of other processes (%s ...).", len(missing), missing[0])
    return None
  loaded = [np.load(p) for p in parts]
  ids = np.concatenate([p["ids"] for p in loaded])
  labels = np.concatenate([p["labels"] for p in loaded])
  sqdist = np.concatenate([p["sqdist"] for p in loaded])
  order = np.argsort(ids)
  base = np.load(centroids_path)
  levels = kmeans.hierarchical_kmeans(base, c.n_clusters[1:], c.resampling_steps[1:], c.sample_sizes[1:],
                                      config.seed, c.iterations)
  arrays = {"ids": ids[order], "labels": labels[order], "sqdist": sqdist[order], "centroids_1": base}
  for level, entry in enumerate(levels, start=2):
    arrays[f"centroids_{level}"] = entry["centroids"]
    arrays[f"parents_{level}"] = entry["parents"]
  store.atomic_savez(os.path.join(out_dir, "hierarchy.npz"), **arrays)
  hierarchy = load(workdir)
  sizes = [np.array([len(m) for m in hierarchy["members"]])]
  for p in hierarchy["parents"]:
    sizes.append(np.bincount(p, weights=sizes[-1]).astype(np.int64))
  summary = {"points": int(len(ids)), "levels": [
      {"clusters": int(len(s)), "non_empty": int((s > 0).sum()), "min": int(s[s > 0].min()),
       "max": int(s.max()), "mean": float(s[s > 0].mean())} for s in sizes]}
  store.write_json(os.path.join(out_dir, "summary.json"), summary)
  logging.info("cluster: %s", summary)
  return summary


def load(workdir: str) -> dict:
  """The hierarchy: `ids` (sorted), their level-1 `labels`, `members` (per level-1 cluster, closest
  to the centroid first) and `parents` (per level above 1)."""
  path = store.require(os.path.join(workdir, "cluster", "hierarchy.npz"), "The cluster hierarchy", "cluster")
  data = np.load(path)
  ids, labels, sqdist = data["ids"], data["labels"], data["sqdist"]
  num_base = len(data["centroids_1"])
  order = np.lexsort((sqdist, labels))
  members = np.split(ids[order], np.searchsorted(labels[order], np.arange(1, num_base)))
  parents, level = [], 2
  while f"parents_{level}" in data:
    parents.append(data[f"parents_{level}"])
    level += 1
  return {"ids": ids, "labels": labels, "members": members, "parents": parents}


def top_level_labels(hierarchy: dict) -> np.ndarray:
  """Each point's cluster at the top level (aligned with `hierarchy["ids"]`)."""
  labels = hierarchy["labels"]
  for p in hierarchy["parents"]:
    labels = p[labels]
  return labels


def run(config, workdir: str, process_index: int = 0, process_count: int = 1) -> dict | None:
  map_phase(config, workdir, process_index, process_count)
  return reduce_phase(config, workdir)
