"""Retrieval-based curation (DINOv2 §3): pool images similar to a curated query set.

`knn` mode: the k nearest deduplicated pool images of every query (k = 4 in the paper), searched with
ScaNN per block of pool shards (each process indexes its own blocks; queries are few enough to go
to every block) and merged into a global top-k. `sample` mode, for small query sets: the pool is
clustered with k-means and each query contributes `samples_per_query` random images of its
cluster. Either way the result is the union of what the queries retrieved, without repeats.
"""

import os

import numpy as np
from absl import logging

from dinojax.curation import dedup, embed, kmeans, search, store

MODES = ("knn", "sample")


def _paths(workdir: str):
  out = os.path.join(workdir, "retrieve")
  return out, os.path.join(out, "parts")


def _inputs(config, workdir: str):
  if not config.data.get("queries"):
    raise ValueError("retrieve needs a curated query collection: set config.data.queries.")
  if config.retrieve.mode not in MODES:
    raise ValueError(f"Unknown retrieve.mode {config.retrieve.mode!r}; choose one of {MODES}.")
  pool = store.EmbeddingShards(embed.collection_dir(workdir, "pool")).check_complete("retrieve")
  queries = store.EmbeddingShards(embed.collection_dir(workdir, "queries")).check_complete("retrieve")
  keep = dedup.load_keep(workdir)
  query_ids, query_vectors = queries.load_many(range(queries.num_shards))
  search.check_dims(query_vectors, np.zeros((0, pool.dim), np.float32))
  return pool, keep, query_ids, query_vectors


def map_phase(config, workdir: str, process_index: int, process_count: int) -> None:
  pool, keep, _, queries = _inputs(config, workdir)
  out_dir, parts_dir = _paths(workdir)
  os.makedirs(parts_dir, exist_ok=True)
  blocks = pool.blocks(config.search.shards_per_block)
  r = config.retrieve
  centroids = None
  if r.mode == "sample":
    path = os.path.join(out_dir, "pool_centroids.npy")
    centroids = np.load(path) if os.path.exists(path) else store.save_once(path, kmeans.fit_streaming(
        kmeans.minibatches(pool, keep, r.kmeans_batch_size, r.kmeans_epochs, config.seed),
        r.clusters, config.seed))
  for b in store.owned(len(blocks), process_index, process_count):
    part = os.path.join(parts_dir, f"{r.mode}-{b:05d}.npz")
    if os.path.exists(part):
      continue
    ids, vectors = pool.load_many(blocks[b], keep)
    if r.mode == "knn":
      scores, local = search.Index(vectors, r.k, config.search).search(queries)
      store.atomic_savez(part, scores=scores, ids=np.where(local >= 0, ids[np.maximum(local, 0)], -1))
    else:
      store.atomic_savez(part, ids=ids, labels=kmeans.assign(vectors, centroids)[0])


def reduce_phase(config, workdir: str) -> dict | None:
  """`retrieve/selected.npy` (sorted unique pool ids) and `summary.json`, plus `neighbours.npy` /
  `scores.npy` (queries × k) in knn mode; None while other processes' parts are missing."""
  pool, _, query_ids, queries = _inputs(config, workdir)
  out_dir, parts_dir = _paths(workdir)
  r = config.retrieve
  num_blocks = len(pool.blocks(config.search.shards_per_block))
  paths = [os.path.join(parts_dir, f"{r.mode}-{b:05d}.npz") for b in range(num_blocks)]
  missing = store.missing_parts(paths)
  if missing:
    logging.info("retrieve: waiting for %d parts of other processes (%s ...).", len(missing), missing[0])
    return None
  parts = [np.load(p) for p in paths]
  if r.mode == "knn":
    scores, neighbours = search.merge_topk([(p["scores"], p["ids"]) for p in parts], r.k)
    store.atomic_save(os.path.join(out_dir, "neighbours.npy"), neighbours)
    store.atomic_save(os.path.join(out_dir, "scores.npy"), scores)
    selected = np.unique(neighbours[neighbours >= 0])
  else:
    centroids = np.load(os.path.join(out_dir, "pool_centroids.npy"))
    selected = sample_from_clusters(np.concatenate([p["ids"] for p in parts]),
                                    np.concatenate([p["labels"] for p in parts]),
                                    kmeans.assign(queries, centroids)[0], r.samples_per_query,
                                    np.random.default_rng(config.seed))
  store.atomic_save(os.path.join(out_dir, "query_ids.npy"), query_ids)
  embed.write_selection(out_dir, selected, config.data.pool, config.data.image_size)
  summary = {"queries": int(len(query_ids)), "mode": r.mode, "selected": int(len(selected))}
  if r.mode == "knn":
    summary.update(k=r.k, mean_top1_similarity=float(np.mean(scores[:, 0])))
  store.write_json(os.path.join(out_dir, "summary.json"), summary)
  logging.info("retrieve: %s", summary)
  return summary


def sample_from_clusters(pool_ids: np.ndarray, pool_labels: np.ndarray, query_labels: np.ndarray,
                         per_query: int, rng: np.random.Generator) -> np.ndarray:
  """Sorted ids: from each pool cluster holding m queries, min(m·per_query, size) random members."""
  selected = []
  clusters, counts = np.unique(query_labels, return_counts=True)
  for c, m in zip(clusters, counts):
    members = np.sort(pool_ids[pool_labels == c])
    selected.append(rng.choice(members, min(int(m) * per_query, len(members)), replace=False))
  return np.unique(np.concatenate(selected)) if selected else np.zeros((0,), np.int64)


def load_selected(workdir: str) -> np.ndarray:
  return np.load(store.require(os.path.join(workdir, "retrieve", "selected.npy"), "The retrieved set",
                               "retrieve"))


def run(config, workdir: str, process_index: int = 0, process_count: int = 1) -> dict | None:
  map_phase(config, workdir, process_index, process_count)
  return reduce_phase(config, workdir)
