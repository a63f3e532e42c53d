"""Nearest neighbours by cosine similarity (the dot product of L2-normalised embeddings, DINOv2 §3).

Two searches with one result format: exact blocked matmul top-k in JAX (the reference, and the right
choice for small sets) and ScaNN (Guo et al., 2020): a k-means tree over the database, anisotropic
vector quantisation ("AH") to score the points of the searched leaves, then exact re-ranking of the
best `reorder` candidates. Results always have k columns, padded with (-inf, -1) when the database
has fewer than k points, so partial results over database blocks merge with `merge_topk`.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

METHODS = ("auto", "exact", "scann")


def check_dims(queries: np.ndarray, database: np.ndarray) -> None:
  """A clear error for anything but two (n, D) matrices of the same width D."""
  if queries.ndim != 2 or database.ndim != 2:
    raise ValueError(f"Expected (n, D) embedding matrices, got queries {queries.shape} and database "
                     f"{database.shape}.")
  if queries.shape[1] != database.shape[1]:
    raise ValueError(f"Embedding dimensions differ: queries have {queries.shape[1]}, the database "
                     f"{database.shape[1]}. Were they embedded with different backbones? Re-embed "
                     "both collections with the same model.")


def _padded(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  missing = k - scores.shape[1]
  if missing <= 0:
    return scores[:, :k], indices[:, :k]
  n = len(scores)
  return (np.concatenate([scores, np.full((n, missing), -np.inf, np.float32)], 1),
          np.concatenate([indices, np.full((n, missing), -1, np.int64)], 1))


# ---------------------------------------------------------------------------------------------------
# Exact search
# ---------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames="k")
def _block_topk(queries, block, valid, best_scores, best_indices, offset, k):
  """Running top-k of `queries` against one database block (rows >= `valid` are padding)."""
  scores = queries @ block.T
  scores = jnp.where(jnp.arange(block.shape[0]) < valid, scores, -jnp.inf)
  top, idx = jax.lax.top_k(scores, min(k, block.shape[0]))
  scores = jnp.concatenate([best_scores, top], axis=1)
  indices = jnp.concatenate([best_indices, jnp.where(jnp.isfinite(top), idx + offset, -1)], axis=1)
  top, pick = jax.lax.top_k(scores, k)
  return top, jnp.take_along_axis(indices, pick, axis=1)


def exact_knn(queries: np.ndarray, database: np.ndarray, k: int, query_block: int = 1024,
              database_block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
  """Brute-force top-k by dot product: (scores (Q, k) float32, indices (Q, k) int64), best first.

  Blocked over queries and database so memory stays at query_block × database_block scores;
  every block has a fixed shape (the last ones padded), so it compiles once.
  """
  check_dims(queries, database)
  n = len(database)
  if n == 0 or len(queries) == 0:
    return _padded(np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), k)
  database_block = min(database_block, n)
  query_block = min(query_block, len(queries))
  db_blocks = []
  for start in range(0, n, database_block):
    block = np.asarray(database[start:start + database_block], np.float32)
    valid = len(block)
    block = np.concatenate([block, np.zeros((database_block - valid, block.shape[1]), np.float32)])
    db_blocks.append((jnp.asarray(block), valid, start))
  out_scores, out_indices = [], []
  for qs in range(0, len(queries), query_block):
    q = np.asarray(queries[qs:qs + query_block], np.float32)
    nq = len(q)
    q = jnp.asarray(np.concatenate([q, np.zeros((query_block - nq, q.shape[1]), np.float32)]))
    best = jnp.full((query_block, k), -jnp.inf, jnp.float32)
    best_idx = jnp.full((query_block, k), -1, jnp.int32)
    for block, valid, start in db_blocks:
      best, best_idx = _block_topk(q, block, valid, best, best_idx, start, k)
    out_scores.append(np.asarray(best)[:nq])
    out_indices.append(np.asarray(best_idx)[:nq].astype(np.int64))
  return np.concatenate(out_scores), np.concatenate(out_indices)


# ---------------------------------------------------------------------------------------------------
# ScaNN
# ---------------------------------------------------------------------------------------------------
def scann_searcher(database: np.ndarray, k: int, config):
  """A ScaNN index over `database` for dot-product search: tree (`num_leaves`, 0 = √n), AH scoring
  with `dims_per_block`-dim blocks and anisotropic threshold, exact re-ranking of `reorder` points."""
  import scann
  n = len(database)
  leaves = min(config.num_leaves or max(1, round(math.sqrt(n))), n)
  to_search = min(config.num_leaves_to_search, leaves)
  builder = scann.scann_ops_pybind.builder(np.ascontiguousarray(database, np.float32), k, "dot_product")
  builder = builder.tree(num_leaves=leaves, num_leaves_to_search=to_search,
                         training_sample_size=min(config.training_sample_size, n), spherical=True)
  builder = builder.score_ah(config.dims_per_block,
                             anisotropic_quantization_threshold=config.anisotropic_threshold,
                             training_sample_size=min(config.training_sample_size, n))
  return builder.reorder(max(config.reorder, k)).build()


def scann_knn(queries: np.ndarray, searcher, k: int,
              leaves_to_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Searches a built index (on all cores); `leaves_to_search` overrides the built-in setting."""
  indices, scores = searcher.search_batched_parallel(np.ascontiguousarray(queries, np.float32),
                                                     final_num_neighbors=k,
                                                     leaves_to_search=leaves_to_search)
  indices = np.asarray(indices, np.int64)
  scores = np.where(indices >= 0, np.asarray(scores, np.float32), -np.inf)
  return _padded(scores, indices, k)


# ---------------------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------------------
class Index:
  """A database to search many query batches against: `Index(database, k, config).search(q)` gives
  (scores (Q, k), indices (Q, k)) padded with (-inf, -1). `config.method`: `exact`, `scann`, or
  `auto` (exact below `exact_below` points, where building an index costs more than it saves)."""

  def __init__(self, database: np.ndarray, k: int, config):
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}.")
    if config.method not in METHODS:
      raise ValueError(f"Unknown search method {config.method!r}; choose one of {METHODS}.")
    if database.ndim != 2:
      raise ValueError(f"Expected an (n, D) database, got shape {database.shape}.")
    self.database, self.k = database, k
    use_scann = config.method == "scann" or (config.method == "auto" and len(database) >= config.exact_below)
    self.searcher = None
    if use_scann and len(database) > k:
      logging.info("Building a ScaNN index over %d points.", len(database))
      self.searcher = scann_searcher(database, k, config)

  def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    check_dims(queries, self.database)
    if self.searcher is None:
      return exact_knn(queries, self.database, self.k)
    return scann_knn(queries, self.searcher, self.k)


def knn(queries: np.ndarray, database: np.ndarray, k: int, config) -> tuple[np.ndarray, np.ndarray]:
  """Top-k neighbours in `database` of every query (one-off `Index`)."""
  check_dims(queries, database)
  return Index(database, k, config).search(queries)


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
  """Top-k of the union of partial results (scores, global ids) over database blocks; ties go to
  the lower id, so the merge does not depend on the order of the parts."""
  scores = np.concatenate([p[0] for p in parts], axis=1)
  ids = np.concatenate([p[1] for p in parts], axis=1)
  order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]
  return _padded(np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1), k)
