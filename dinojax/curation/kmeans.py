"""k-means for curation: mini-batch k-means streamed over embedding shards (the pool never sits in one
process's memory), nearest-centroid assignment, and the hierarchical k-means with resampling of Vo et
al. (2024), "Automatic data curation for self-supervised learning: a clustering-based approach", §4.

The clustering itself is scikit-learn's (`MiniBatchKMeans` fed shard by shard through `partial_fit`
at the first level, `KMeans` on the previous level's centroids above it).
"""

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans

from dinojax.curation import search, store


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
  """Lloyd's k-means (k-means++ seeding) centroids of an in-memory array."""
  if n_clusters > len(x):
    raise ValueError(f"k-means with {n_clusters} clusters needs at least as many points; got {len(x)}.")
  model = KMeans(n_clusters, n_init=1, max_iter=iterations, random_state=seed).fit(x)
  return model.cluster_centers_.astype(np.float32)


def closest_per_cluster(x: np.ndarray, labels: np.ndarray, sqdist: np.ndarray, count: int) -> np.ndarray:
  """Indices of up to `count` points of each cluster, the closest to its centroid."""
  order = np.lexsort((sqdist, labels))
  sorted_labels = labels[order]
  starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
  rank = np.arange(len(order)) - starts
  return order[rank < count]


def kmeans_with_resampling(x: np.ndarray, n_clusters: int, resampling_steps: int, sample_size: int,
                           seed: int, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
  """One level of Vo et al.'s hierarchical k-means (§4.2): k-means, then `resampling_steps` times
  k-means again on the `sample_size` points closest to each centroid, which moves centroids from the
  dense modes towards a uniform cover of the support. Skipped when sample_size <= 1, as in the
  official config. Returns (centroids, labels of x)."""
  centroids = kmeans(x, n_clusters, seed, iterations)
  labels, sqdist = assign(x, centroids)
  if sample_size > 1:
    for step in range(resampling_steps):
      sample = x[closest_per_cluster(x, labels, sqdist, sample_size)]
      centroids = kmeans(sample, min(n_clusters, len(sample)), seed + 1 + step, iterations)
      labels, sqdist = assign(x, centroids)
  return centroids, labels


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
