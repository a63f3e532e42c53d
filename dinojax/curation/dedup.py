"""Near-duplicate removal (DINOv2 §3 and App. A.3): self-deduplication of the uncurated pool, then
relative deduplication against the evaluation images so benchmarks stay fair.

Self-deduplication links every pool image to its k nearest pool neighbours whose cosine similarity
reaches `threshold`, takes the connected components of that graph and keeps one image per component
(the lowest id, so the result never depends on search order). Relative deduplication then drops every
survivor whose nearest evaluation image reaches `evaluation_threshold`.

Map (per process): each owned block of pool shards is indexed once and searched by the pool shards
from that block on (a pair in blocks A < B is found from A's index by B's query), and the block's
own images are searched against the evaluation index. Reduce (wherever all parts exist): union-find
over the edges, which are few (only near-duplicates), so no process holds the pool's embeddings.
"""

import os

import numpy as np
import scipy.sparse
from absl import logging
from scipy.sparse import csgraph

from dinojax.curation import embed, search, store


# ---------------------------------------------------------------------------------------------------
# The algorithm
# ---------------------------------------------------------------------------------------------------
def duplicate_edges(query_ids: np.ndarray, query_vectors: np.ndarray, index: search.Index,
                    index_ids: np.ndarray, threshold: float) -> np.ndarray:
  """(E, 2) id pairs (low, high) among each query's k nearest indexed points with cosine >=
  `threshold`, self-matches excluded."""
  if len(query_ids) == 0:
    return np.zeros((0, 2), np.int64)
  scores, neighbours = index.search(query_vectors)
  rows, cols = np.nonzero((scores >= threshold) & (neighbours >= 0))
  a, b = query_ids[rows], index_ids[neighbours[rows, cols]]
  pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
  return pairs[pairs[:, 0] != pairs[:, 1]]


def components_to_remove(edges: np.ndarray) -> tuple[np.ndarray, int]:
  """(sorted ids to drop, number of duplicate components): every member of a connected component
  of the duplicate graph except its lowest id. Works on the edge endpoints only."""
  if len(edges) == 0:
    return np.zeros((0,), np.int64), 0
  nodes, local = np.unique(edges, return_inverse=True)
  local = local.reshape(edges.shape)
  graph = scipy.sparse.coo_matrix((np.ones(len(local)), (local[:, 0], local[:, 1])),
                                  shape=(len(nodes), len(nodes)))
  count, labels = csgraph.connected_components(graph, directed=False)
  lowest = np.full(count, np.iinfo(np.int64).max)
  np.minimum.at(lowest, labels, nodes)
  return np.sort(nodes[nodes != lowest[labels]]), count


def near_evaluation(ids: np.ndarray, vectors: np.ndarray, evaluation_index: search.Index,
                    threshold: float) -> np.ndarray:
  """Ids whose nearest evaluation image has cosine >= `threshold`."""
  if len(ids) == 0:
    return np.zeros((0,), np.int64)
  scores, _ = evaluation_index.search(vectors)
  return ids[scores[:, 0] >= threshold]


# ---------------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------------
def _dirs(workdir: str) -> tuple[str, str]:
  out = os.path.join(workdir, "dedup")
  return out, os.path.join(out, "parts")


def _part(parts_dir: str, kind: str, block: int) -> str:
  return os.path.join(parts_dir, f"{kind}-{block:05d}.npy")


def _inputs(config, workdir: str):
  pool = store.EmbeddingShards(embed.collection_dir(workdir, "pool")).check_complete("dedup")
  evaluation = None
  if config.data.get("evaluation"):
    evaluation = store.EmbeddingShards(embed.collection_dir(workdir, "evaluation")).check_complete("dedup")
  return pool, evaluation


def map_phase(config, workdir: str, process_index: int, process_count: int) -> None:
  """Duplicate edges and near-evaluation ids of this process's pool blocks."""
  pool, evaluation = _inputs(config, workdir)
  _, parts_dir = _dirs(workdir)
  os.makedirs(parts_dir, exist_ok=True)
  blocks = pool.blocks(config.search.shards_per_block)
  todo = [b for b in store.owned(len(blocks), process_index, process_count)
          if not os.path.exists(_part(parts_dir, "edges", b))]
  if not todo:
    return
  evaluation_index = None
  if evaluation is not None:
    eval_ids, eval_vectors = evaluation.load_many(range(evaluation.num_shards))
    search.check_dims(eval_vectors, np.zeros((0, pool.dim), np.float32))
    evaluation_index = search.Index(eval_vectors, 1, config.search)
  for b in todo:
    ids, vectors = pool.load_many(blocks[b])
    near = (near_evaluation(ids, vectors, evaluation_index, config.dedup.evaluation_threshold)
            if evaluation_index is not None else np.zeros((0,), np.int64))
    index = search.Index(vectors, config.dedup.k, config.search)
    edges = [duplicate_edges(*pool.load(s), index, ids, config.dedup.threshold)
             for s in range(blocks[b].start, pool.num_shards)]
    store.atomic_save(_part(parts_dir, "near_evaluation", b), near)
    store.atomic_save(_part(parts_dir, "edges", b), np.concatenate(edges))  # last: marks the part done
    logging.info("dedup block %d: %d duplicate pairs, %d near evaluation images.",
                 b, sum(map(len, edges)), len(near))


def reduce_phase(config, workdir: str) -> dict | None:
  """Union-find over all parts -> `dedup/keep.npy` (sorted pool ids kept) and `summary.json`;
  None while parts of other processes are missing."""
  pool, _ = _inputs(config, workdir)
  out_dir, parts_dir = _dirs(workdir)
  num_blocks = len(pool.blocks(config.search.shards_per_block))
  edge_parts = [_part(parts_dir, "edges", b) for b in range(num_blocks)]
  missing = store.missing_parts(edge_parts)
  if missing:
    logging.info("dedup: waiting for %d parts of other processes (%s ...).", len(missing), missing[0])
    return None
  edges = np.concatenate([np.load(p) for p in edge_parts])
  removed_self, components = components_to_remove(edges)
  near = np.unique(np.concatenate([np.load(_part(parts_dir, "near_evaluation", b))
                                   for b in range(num_blocks)]))
  pool_ids = np.sort(pool.all_ids())
  survivors = pool_ids[~store.is_in(pool_ids, removed_self)]
  removed_evaluation = survivors[store.is_in(survivors, near)]
  keep = survivors[~store.is_in(survivors, removed_evaluation)]
  store.atomic_save(os.path.join(out_dir, "removed_self.npy"), removed_self)
  store.atomic_save(os.path.join(out_dir, "removed_evaluation.npy"), removed_evaluation)
  store.atomic_save(os.path.join(out_dir, "keep.npy"), keep)
  summary = {"pool": int(len(pool_ids)), "duplicate_pairs": int(len(np.unique(edges, axis=0))),
             "duplicate_components": int(components), "removed_self": int(len(removed_self)),
             "removed_evaluation": int(len(removed_evaluation)), "kept": int(len(keep)),
             "threshold": config.dedup.threshold, "evaluation_threshold": config.dedup.evaluation_threshold}
  store.write_json(os.path.join(out_dir, "summary.json"), summary)
  logging.info("dedup: %s", summary)
  return summary


def found_edges(config, workdir: str) -> np.ndarray:
  """The unique duplicate (low, high) id pairs every map part found (once all parts exist)."""
  pool, _ = _inputs(config, workdir)
  _, parts_dir = _dirs(workdir)
  blocks = range(len(pool.blocks(config.search.shards_per_block)))
  paths = [store.require(_part(parts_dir, "edges", b), "A deduplication part", "dedup") for b in blocks]
  return np.unique(np.concatenate([np.load(p) for p in paths]).reshape(-1, 2), axis=0)


def load_keep(workdir: str) -> np.ndarray:
  """The deduplicated pool's sorted ids (what `retrieve` and `cluster` start from)."""
  return np.load(store.require(os.path.join(workdir, "dedup", "keep.npy"), "The deduplicated pool",
                               "dedup"))


def run(config, workdir: str, process_index: int = 0, process_count: int = 1) -> dict | None:
  map_phase(config, workdir, process_index, process_count)
  return reduce_phase(config, workdir)
