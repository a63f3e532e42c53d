"""Files the curation steps share through the workdir: numbered embedding shards with their ids,
per-process parts, and small JSON summaries.

Hosts never talk to each other during curation: each writes only the shards and parts it owns, every
file appears under its final name by an atomic rename (so a reader or a restarted job never sees half
a file), and a step's reduce runs wherever all the parts it needs are present.
"""

import json
import math
import os

import numpy as np

MANIFEST = "manifest.json"


# ---------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------
def _temporary(path: str) -> str:
  return f"{path}.tmp-{os.getpid()}"


def atomic_save(path: str, array: np.ndarray) -> None:
  """np.save under a temporary name, then rename: `path` is either absent or complete."""
  tmp = _temporary(path)
  with open(tmp, "wb") as f:
    np.save(f, np.asarray(array))
  os.replace(tmp, path)


def save_once(path: str, array: np.ndarray) -> np.ndarray:
  """Saves `array` at `path` unless a file is already there, atomically (hard link: no overwrite),
  and returns what is on disk. Processes that computed the same thing concurrently (e.g. k-means
  centroids) all continue with the first one published, so they never disagree."""
  tmp = _temporary(path)
  with open(tmp, "wb") as f:
    np.save(f, np.asarray(array))
  try:
    os.link(tmp, path)
  except FileExistsError:
    pass
  finally:
    os.remove(tmp)
  return np.load(path)


def atomic_savez(path: str, **arrays) -> None:
  """np.savez of named arrays, renamed into place."""
  tmp = _temporary(path)
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def atomic_write_text(path: str, text: str) -> None:
  tmp = _temporary(path)
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj) -> None:
  atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------------
# Work split over processes
# ---------------------------------------------------------------------------------------------------
def owned(count: int, process_index: int, process_count: int) -> range:
  """Items (shards, search blocks) process `process_index` of `process_count` handles: i, i+P, ..."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count}).")
  return range(process_index, count, process_count)


def owned_run(count: int, process_index: int, process_count: int) -> range:
  """Items of process `process_index` as one run of consecutive ones, process after process: the
  processes' items, taken in process order, are all items in order (as the official splits a
  pool's rows over its workers)."""
  owned(count, process_index, process_count)  # the same bounds
  return range(process_index * count // process_count, (process_index + 1) * count // process_count)


def missing_parts(paths: list[str]) -> list[str]:
  return [p for p in paths if not os.path.exists(p)]


def require(path: str, what: str, step: str) -> str:
  """`path`, or a FileNotFoundError saying which step writes it."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} not found at {path}: run the `{step}` step first "
                            f"(python -m dinojax.curate {step} --config ... --workdir ...).")
  return path


# ---------------------------------------------------------------------------------------------------
# Embedding shards
# ---------------------------------------------------------------------------------------------------
class EmbeddingShards:
  """The embeddings of one image collection: `embeddings-%05d.npy` (n, D) float32 L2-normalised and
  `ids-%05d.npy` (n,) int64 (indices into the collection; unreadable images are absent and listed in
  `rejects-%05d.tsv`). Shard s covers collection indices [s·shard_size, (s+1)·shard_size). The
  embeddings file is renamed into place last, so its presence marks a finished shard."""

  def __init__(self, directory: str):
    self.directory = directory

  # -- layout ----------------------------------------------------------------------------------------
  def path(self, kind: str, shard: int) -> str:
    ext = "tsv" if kind == "rejects" else "npy"
    return os.path.join(self.directory, f"{kind}-{shard:05d}.{ext}")

  @property
  def manifest(self) -> dict:
    path = os.path.join(self.directory, MANIFEST)
    if not os.path.exists(path):
      raise FileNotFoundError(f"No embeddings at {self.directory} (no {MANIFEST}): run the `embed` "
                              "step first (python -m dinojax.curate embed --config ... --workdir ...).")
    return read_json(path)

  @property
  def num_shards(self) -> int:
    return self.manifest["num_shards"]

  @property
  def dim(self) -> int:
    """Embedding width, read off the first finished shard's header."""
    for s in range(self.num_shards):
      if self.done(s):
        return int(np.load(self.path("embeddings", s), mmap_mode="r").shape[1])
    raise FileNotFoundError(f"No finished embedding shard in {self.directory}: run the `embed` step.")

  def done(self, shard: int) -> bool:
    return os.path.exists(self.path("embeddings", shard))

  def missing(self) -> list[int]:
    return [s for s in range(self.num_shards) if not self.done(s)]

  def check_complete(self, step: str) -> "EmbeddingShards":
    """Self, or a FileNotFoundError naming the unfinished shards and the step to (re)run."""
    missing = self.missing()
    if missing:
      shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
      raise FileNotFoundError(
          f"`{step}` needs every embedding shard in {self.directory}, but {len(missing)} of "
          f"{self.num_shards} are missing (shards {shown}): run (or finish) the `embed` step first.")
    return self

  # -- reading ---------------------------------------------------------------------------------------
  def load(self, shard: int, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, embeddings) of one shard, restricted to the sorted id array `keep` if given."""
    ids = np.load(self.path("ids", shard))
    vectors = np.load(self.path("embeddings", shard), mmap_mode="r")
    if keep is not None:
      mask = is_in(ids, keep)
      ids, vectors = ids[mask], vectors[mask]
    return ids, np.ascontiguousarray(vectors, np.float32)

  def load_many(self, shards, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    parts = [self.load(s, keep) for s in shards]
    if not parts:
      return np.zeros((0,), np.int64), np.zeros((0, self.dim), np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

  def all_ids(self) -> np.ndarray:
    return np.concatenate([np.load(self.path("ids", s)) for s in range(self.num_shards)])

  def rejects(self) -> list[tuple[int, str, str]]:
    """(id, key, error) of every unreadable image, over the finished shards."""
    out = []
    for s in range(self.num_shards):
      path = self.path("rejects", s)
      if os.path.exists(path):
        with open(path) as f:
          for line in f:
            index, key, error = line.rstrip("\n").split("\t", 2)
            out.append((int(index), key, error))
    return out

  def blocks(self, shards_per_block: int) -> list[range]:
    """Consecutive groups of shards: the unit one process indexes for search."""
    if shards_per_block < 1:
      raise ValueError(f"shards_per_block must be >= 1, got {shards_per_block}.")
    n = self.num_shards
    return [range(b, min(b + shards_per_block, n)) for b in range(0, n, shards_per_block)]


def write_embeddings(directory: str, vectors: np.ndarray, shard_size: int, ids: np.ndarray | None = None,
                     source: str = "imported") -> EmbeddingShards:
  """Stores embeddings made elsewhere (L2-normalised rows; ids default to 0..n-1) in the layout the
  `embed` step writes, so `dedup`, `retrieve` and `cluster` run on them directly."""
  vectors = np.asarray(vectors, np.float32)
  ids = np.arange(len(vectors), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
  if vectors.ndim != 2 or len(ids) != len(vectors):
    raise ValueError(f"Expected (n, D) vectors and n ids, got {vectors.shape} and {ids.shape}.")
  norms = np.linalg.norm(vectors, axis=1)
  if len(norms) and not np.allclose(norms, 1, atol=1e-3):
    raise ValueError("Embeddings must be L2-normalised (cosine similarity is their dot product).")
  shards = EmbeddingShards(directory)
  os.makedirs(directory, exist_ok=True)
  num_shards = max(1, math.ceil(len(vectors) / shard_size))
  write_json(os.path.join(directory, MANIFEST), {"source": source, "num_images": len(vectors),
                                                 "shard_size": shard_size, "num_shards": num_shards})
  for s in range(num_shards):
    part = slice(s * shard_size, (s + 1) * shard_size)
    atomic_save(shards.path("ids", s), ids[part])
    atomic_save(shards.path("embeddings", s), vectors[part])
  return shards


def is_in(ids: np.ndarray, sorted_keep: np.ndarray) -> np.ndarray:
  """Boolean mask of `ids` present in the sorted array `sorted_keep` (binary search, no set)."""
  if len(sorted_keep) == 0:
    return np.zeros(len(ids), bool)
  pos = np.clip(np.searchsorted(sorted_keep, ids), 0, len(sorted_keep) - 1)
  return sorted_keep[pos] == ids
