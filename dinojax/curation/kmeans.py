"""k-means for curation: nearest-centroid assignment, mini-batch k-means streamed over embedding
shards (the retrieval step's clustering), and the hierarchical k-means with resampling of Vo et al.
(2024), "Automatic data curation for self-supervised learning: a clustering-based approach", §4,
whose every k-means is the official one (`lloyd.py`).
"""

import numpy as np
from sklearn.cluster import MiniBatchKMeans

from dinojax.curation import lloyd, search, store


def minibatches(shards: store.EmbeddingShards, keep: np.ndarray | None, batch_size: int, epochs: int,
                seed: int):
  """`epochs` passes over the (kept) embeddings in batches of `batch_size`: shards in a seeded
  random order, rows shuffled within each shard, one shard in memory at a time."""
  rng = np.random.default_rng(seed)
  carry = np.zeros((0, shards.dim), np.float32)
  for _ in range(epochs):
    for s in rng.permutation(shards.num_shards):
      _, vectors = shards.load(int(s), keep)
      carry = np.concatenate([carry, vectors[rng.permutation(len(vectors))]])
      while len(carry) >= batch_size:
        yield carry[:batch_size]
        carry = carry[batch_size:]
  if len(carry):
    yield carry


def fit_streaming(batches, n_clusters: int, seed: int) -> np.ndarray:
  """Mini-batch k-means (Sculley, 2010) centroids (n_clusters, D) from an iterator of batches.
  The first `partial_fit` call seeds with k-means++, so batches are pooled until there are at
  least 3·n_clusters points (scikit-learn's own init_size rule)."""
  model = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=1)
  pending = []
  seeded = False
  for batch in batches:
    pending.append(batch)
    if not seeded and sum(map(len, pending)) < 3 * n_clusters:
      continue
    model.partial_fit(np.concatenate(pending))
    pending, seeded = [], True
  if pending:
    data = np.concatenate(pending)
    if not seeded and len(data) < n_clusters:
      raise ValueError(f"k-means with {n_clusters} clusters needs at least as many points; got {len(data)}.")
    model.partial_fit(data)
  return model.cluster_centers_.astype(np.float32)


def assign(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Nearest centroid (Euclidean) of each vector: (labels int32, squared distances float32).

  argmin ‖x − c‖² = argmax [x, 1]·[2c, −‖c‖²], one exact top-1 search of augmented vectors."""
  if len(vectors) == 0:
    return np.zeros((0,), np.int32), np.zeros((0,), np.float32)
  search.check_dims(vectors, centroids)
  x = np.concatenate([vectors, np.ones((len(vectors), 1), np.float32)], 1)
  c = np.concatenate([2 * centroids, -np.sum(centroids ** 2, 1, keepdims=True)], 1).astype(np.float32)
  scores, labels = search.exact_knn(x, c, 1)
  sqdist = np.maximum(np.sum(vectors.astype(np.float32) ** 2, 1) - scores[:, 0], 0)
  return labels[:, 0].astype(np.int32), sqdist.astype(np.float32)


def kmeans(x: np.ndarray, n_clusters: int, seed: int, iterations: int) -> np.ndarray:
  """Centroids of the official k-means of an in-memory array, over this process's devices."""
  if n_clusters > len(x):
    raise ValueError(f"k-means with {n_clusters} clusters needs at least as many points; got {len(x)}.")
  return lloyd.kmeans(x, n_clusters, iterations, seed)


def closest_per_cluster(x: np.ndarray, labels: np.ndarray, sqdist: np.ndarray, count: int) -> np.ndarray:
  """Indices of up to `count` points of each cluster, the closest to its centroid."""
  order = np.lexsort((sqdist, labels))
  sorted_labels = labels[order]
  starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
  rank = np.arange(len(order)) - starts
  return order[rank < count]


def kmeans_with_resampling(x: np.ndarray, n_clusters: int, resampling_steps: int, sample_size: int,
                           seed: int, iterations: int = 50, centroids: np.ndarray | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
  """One level of Vo et al.'s hierarchical k-means (§4.2), steps counted as the official config
  counts them: step 1 is k-means of `x` (skipped when its `centroids` are given), each further step
  k-means of the `sample_size` points closest to each centroid, which moves centroids from the dense
  modes towards a uniform cover of the support. Returns (centroids, labels of x)."""
  if resampling_steps < 1:
    raise ValueError(f"resampling_steps counts the first k-means too, so must be >= 1; got {resampling_steps}.")
  if centroids is None:
    centroids = kmeans(x, n_clusters, seed, iterations)
  labels, sqdist = assign(x, centroids)
  for step in range(1, resampling_steps):
    sample = x[closest_per_cluster(x, labels, sqdist, sample_size)]
    centroids = kmeans(sample, min(n_clusters, len(sample)), seed + step, iterations)
    labels, sqdist = assign(x, centroids)
  return centroids, labels


def split(x: np.ndarray, n_splits: int, seed: int, iterations: int) -> tuple[np.ndarray, np.ndarray]:
  """One cluster split into min(n_splits, len(x)) by k-means, empty parts dropped, as the official
  reaches its 10M first-level clusters. Returns (centroids, labels of x). A cluster of at most
  n_splits points becomes one part per point: what k-means with k = n gives on distinct points,
  without compiling a program for every small size."""
  if len(x) <= n_splits:
    return x.astype(np.float32), np.arange(len(x), dtype=np.int32)
  centroids = lloyd.kmeans(x, n_splits, iterations, seed)
  labels, _ = assign(x, centroids)
  used = np.unique(labels)
  return centroids[used], np.searchsorted(used, labels).astype(np.int32)


def hierarchical_kmeans(base_centroids: np.ndarray, n_clusters, resampling_steps, sample_sizes,
                        seed: int, iterations: int = 50) -> list[dict]:
  """Levels 2.. of the hierarchy: each clusters the previous level's centroids. Returns per level
  {"centroids" (n_l, D), "parents" (n_{l-1},): the level-l cluster of each level-(l-1) cluster}."""
  levels, previous = [], base_centroids
  for level, (k, steps, size) in enumerate(zip(n_clusters, resampling_steps, sample_sizes), start=2):
    if k > len(previous):
      raise ValueError(f"Level {level} asks for {k} clusters of the {len(previous)} level-{level - 1} "
                       "centroids; each level needs fewer clusters than the one below.")
    centroids, parents = kmeans_with_resampling(previous, k, steps, size, seed + 1000 * level, iterations)
    levels.append({"centroids": centroids, "parents": parents})
    previous = centroids
  return levels
