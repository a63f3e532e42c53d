"""The `cluster` step: hierarchical k-means of the curated-so-far pool (Vo et al., 2024, §4).

Level 1 clusters the pool's embeddings with the official k-means (`lloyd.py`): one collective job
whose rows are sharded over every device of every JAX process, resumable per iteration. With
`n_splits[0] > 1` each level-1 cluster is then split further by k-means of its own points (the
official reaches its 10M first-level clusters as 100k clusters split 100 ways), in parts of
`split_part_clusters` consecutive clusters: part j is process j mod P's and is saved as it finishes.
Every process assigns its own shards to the level-1 centroids. Levels 2.. cluster the previous
level's centroids in memory, with resampling (`kmeans.py`). The `sample` step reads the resulting
hierarchy.

Processes share the workdir, and a file is the barrier between them: without a JAX job joining them
(`python -m dinojax.curate --coordinator`), process 0 fits level 1 while the others wait for its
centroids; with splits, every process waits for all assignments before splitting its parts,
process 0 merges the parts and runs the upper levels, and the others wait for its summary, so one
invocation of every process completes the step. A process that waits longer than
`cluster.barrier_timeout` seconds stops with an error naming the files and processes it waits for.

Input (`config.cluster.input`): `dedup` (the deduplicated pool, as in Vo et al.) or `retrieve`
(the DINOv2 retrieval result).
"""

import math
import os
import time

import numpy as np
import jax
from absl import logging

from dinojax import parallel
from dinojax.curation import dedup, embed, kmeans, lloyd, retrieve, store

INPUTS = ("dedup", "retrieve")
POLL_SECONDS = 1.0


def input_ids(config, workdir: str) -> np.ndarray:
  """The sorted pool ids to cluster: `cluster.input` names the step whose result they are, or is a
  `.npy` file of them (the pairs both sides of a pair curation keep, `pairs.py`)."""
  if config.cluster.input.endswith(".npy"):
    return np.load(store.require(config.cluster.input, "The ids to cluster", "dedup"))
  if config.cluster.input == "dedup":
    return dedup.load_keep(workdir)
  if config.cluster.input == "retrieve":
    return retrieve.load_selected(workdir)
  raise ValueError(f"Unknown cluster.input {config.cluster.input!r}; choose one of {INPUTS}.")


def check_levels(c) -> None:
  lengths = {len(c.n_clusters), len(c.resampling_steps), len(c.sample_sizes), len(c.n_splits)}
  if len(lengths) != 1 or not c.n_clusters:
    raise ValueError("cluster.n_clusters, n_splits, resampling_steps and sample_sizes need one entry per "
                     f"level; got {list(c.n_clusters)}, {list(c.n_splits)}, {list(c.resampling_steps)}, "
                     f"{list(c.sample_sizes)}.")
  if min(c.resampling_steps) < 1:
    raise ValueError("cluster.resampling_steps counts the first k-means as a step (the official "
                     f"meaning: 1 = no resampling), so every entry must be >= 1; got {list(c.resampling_steps)}.")
  if min(c.n_splits) < 1 or any(s != 1 for s in c.n_splits[1:]):
    raise ValueError(f"cluster.n_splits splits level-1 clusters only: [s, 1, 1, ...] with s >= 1; got "
                     f"{list(c.n_splits)}.")
  if c.n_splits[0] > 1 and c.resampling_steps[0] > 1:
    raise ValueError("Level 1 either resamples or splits its clusters (as the official configs), not both.")
  fine = [c.n_clusters[0] * c.n_splits[0], *c.n_clusters[1:]]
  if any(b >= a for a, b in zip(fine, fine[1:])):
    raise ValueError(f"cluster.n_clusters (level 1 times n_splits[0]) must decrease level by level, got {fine}.")


def _paths(workdir: str):
  out = os.path.join(workdir, "cluster")
  return out, os.path.join(out, "parts"), os.path.join(out, "level1_centroids.npy")


def _wait_for(parts: dict[str, int], what: str, timeout: float) -> None:
  """Blocks until every file of `parts` (path: the process that writes it) exists, logging what it
  waits for; after `timeout` seconds, a TimeoutError names the files still missing and their
  processes (one that crashed or was never started)."""
  deadline = time.monotonic() + timeout
  while missing := store.missing_parts(list(parts)):
    if time.monotonic() > deadline:
      shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
      raise TimeoutError(
          f"Waited {timeout:g} s for {what}: {len(missing)} file(s) missing ({shown}), written by process(es) "
          f"{sorted({parts[p] for p in missing})}. Run those with the same --process_count, then rerun this one "
          "(it resumes); cluster.barrier_timeout sets the wait.")
    logging.log_every_n_seconds(logging.INFO, "cluster: waiting for %s (%d files missing, %s ...).", 60,
                                what, len(missing), missing[0])
    time.sleep(POLL_SECONDS)


def _assignment_parts(parts_dir: str, num_shards: int) -> list[str]:
  return [os.path.join(parts_dir, f"assign-{s:05d}.npz") for s in range(num_shards)]


def _split_parts(parts_dir: str, c) -> list[str]:
  """Part j of the split holds level-1 clusters j·S .. (j+1)·S − 1 (S = `split_part_clusters`); its
  name says which, so a part saved with another S is never taken for one of these."""
  k, size = c.n_clusters[0], c.split_part_clusters
  return [os.path.join(parts_dir, f"split-{start:09d}-{min(start + size, k):09d}.npz")
          for start in range(0, k, size)]


def _owners(parts: list[str], process_count: int) -> dict[str, int]:
  """Each part and the process that writes it: part i is process i mod P's (`store.owned`)."""
  return {p: i % process_count for i, p in enumerate(parts)}


def level1_centroids(config, pool: store.EmbeddingShards, ids: np.ndarray, state_dir: str) -> np.ndarray:
  """The official k-means of the pool: JAX process i holds the i-th run of consecutive shards,
  sharded over its devices of the config's mesh, so the rows keep the pool's order and a seed draws
  the same rows on any number of processes; then the level's resampling steps, which need the whole
  pool in one process."""
  c = config.cluster
  k = c.n_clusters[0]
  shards = store.owned_run(pool.num_shards, jax.process_index(), jax.process_count())
  _, local = pool.load_many(shards, ids)
  rows = lloyd.shard_rows(local, parallel.make_mesh(config.mesh), lloyd.chunk_rows(k))
  logging.info("cluster: k-means with %d clusters over %d images, %d devices.", k, rows.num_rows,
               rows.mesh.devices.size)
  centroids = lloyd.fit(rows, k, c.iterations, config.seed, state_dir=state_dir,
                        checkpoint_every=c.checkpoint_period)
  if c.resampling_steps[0] > 1:
    if jax.process_count() > 1:
      raise ValueError("Resampling at level 1 needs the whole pool in one process; set "
                       "cluster.resampling_steps[0] = 1 for a pool spread over hosts.")
    centroids, _ = kmeans.kmeans_with_resampling(local, k, c.resampling_steps[0], c.sample_sizes[0],
                                                 config.seed, c.iterations, centroids=centroids)
  return centroids


def map_phase(config, workdir: str, process_index: int, process_count: int) -> None:
  """Level-1 centroids (fitted by every process of a JAX job joining them, else by process 0 while
  the others wait for them), then this process's shards' assignments to them."""
  c = config.cluster
  check_levels(c)
  pool = store.EmbeddingShards(embed.collection_dir(workdir, "pool")).check_complete("cluster")
  ids = input_ids(config, workdir)
  out_dir, parts_dir, centroids_path = _paths(workdir)
  os.makedirs(parts_dir, exist_ok=True)
  if os.path.exists(centroids_path):
    centroids = np.load(centroids_path)
  elif process_index == 0 or jax.process_count() > 1:
    centroids = store.save_once(centroids_path,
                                level1_centroids(config, pool, ids, os.path.join(out_dir, "level1")))
  else:
    _wait_for({centroids_path: 0}, "the level-1 centroids of process 0", c.barrier_timeout)
    centroids = np.load(centroids_path)
  parts = _assignment_parts(parts_dir, pool.num_shards)
  for s in store.owned(pool.num_shards, process_index, process_count):
    if not os.path.exists(part := parts[s]):
      shard_ids, vectors = pool.load(s, ids)
      labels, sqdist = kmeans.assign(vectors, centroids)
      store.atomic_savez(part, ids=shard_ids, labels=labels, sqdist=sqdist)


def _assignments(parts: list[str]) -> tuple[np.ndarray, ...]:
  loaded = [np.load(p) for p in parts]
  return tuple(np.concatenate([p[k] for p in loaded]) for k in ("ids", "labels", "sqdist"))


def split_phase(config, workdir: str, process_index: int, process_count: int) -> None:
  """Splits the level-1 clusters of this process's parts (`_split_parts`) into up to `n_splits[0]`
  each, once every process's assignments are written; each part is saved as it finishes, so a
  restarted process continues at its first missing part."""
  c = config.cluster
  pool = store.EmbeddingShards(embed.collection_dir(workdir, "pool"))
  _, parts_dir, _ = _paths(workdir)
  parts = _split_parts(parts_dir, c)
  todo = [j for j in store.owned(len(parts), process_index, process_count) if not os.path.exists(parts[j])]
  if not todo:
    return
  assignments = _assignment_parts(parts_dir, pool.num_shards)
  _wait_for(_owners(assignments, process_count), "the level-1 assignments of every process", c.barrier_timeout)
  ids, labels, _ = _assignments(assignments)
  mine = np.isin(labels // c.split_part_clusters, todo)
  order = np.argsort(ids[mine])
  my_ids, my_labels = ids[mine][order], labels[mine][order]
  _, vectors = pool.load_many(range(pool.num_shards), my_ids)  # shards hold ascending ids
  for j in todo:
    arrays = {k: [] for k in ("centroids", "ids", "labels", "sqdist")}
    count = 0
    for cluster_index in np.unique(my_labels[my_labels // c.split_part_clusters == j]):
      members = my_labels == cluster_index
      centroids, sub = kmeans.split(vectors[members], c.n_splits[0], config.seed + 1 + int(cluster_index),
                                    c.iterations)
      arrays["centroids"].append(centroids)
      arrays["ids"].append(my_ids[members])
      arrays["labels"].append(count + sub)
      arrays["sqdist"].append(np.sum((vectors[members] - centroids[sub]) ** 2, 1).astype(np.float32))
      count += len(centroids)
    empty = {"centroids": np.zeros((0, pool.dim), np.float32), "ids": np.zeros(0, np.int64),
             "labels": np.zeros(0, np.int32), "sqdist": np.zeros(0, np.float32)}
    store.atomic_savez(parts[j], **{k: np.concatenate(v) if v else empty[k] for k, v in arrays.items()})


def _split_assignments(parts: list[str]) -> tuple[np.ndarray, ...]:
  """(ids, labels, sqdist, centroids) of the split clusters, numbered in the order of the level-1
  cluster they come from (as the official concatenates them): the parts hold consecutive level-1
  clusters, each part its clusters in order."""
  loaded = [np.load(p) for p in parts]
  offsets = np.cumsum([0] + [len(p["centroids"]) for p in loaded])
  labels = np.concatenate([o + p["labels"].astype(np.int64) for o, p in zip(offsets, loaded)])
  return (np.concatenate([p["ids"] for p in loaded]), labels.astype(np.int32),
          np.concatenate([p["sqdist"] for p in loaded]),
          np.concatenate([p["centroids"] for p in loaded]).astype(np.float32))


def reduce_phase(config, workdir: str) -> dict | None:
  """Upper levels and `cluster/hierarchy.npz`; None while other processes' parts are missing."""
  c = config.cluster
  pool = store.EmbeddingShards(embed.collection_dir(workdir, "pool"))
  out_dir, parts_dir, centroids_path = _paths(workdir)
  if c.n_splits[0] > 1:
    parts = _split_parts(parts_dir, c)
  else:
    parts = _assignment_parts(parts_dir, pool.num_shards)
  missing = store.missing_parts(parts)
  if missing:
    logging.info("cluster: waiting for %d parts of other processes (%s ...).", len(missing), missing[0])
    return None
  if c.n_splits[0] > 1:
    ids, labels, sqdist, base = _split_assignments(parts)
  else:
    (ids, labels, sqdist), base = _assignments(parts), np.load(centroids_path)
  order = np.argsort(ids)
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
  """The step's summary; without splits None in every process but the last to finish (which
  reduces), with splits the summary in every process (they wait for each other)."""
  c = config.cluster
  map_phase(config, workdir, process_index, process_count)
  if c.n_splits[0] == 1:
    return reduce_phase(config, workdir)
  split_phase(config, workdir, process_index, process_count)
  out_dir, parts_dir, _ = _paths(workdir)
  if process_index > 0:
    summary = os.path.join(out_dir, "summary.json")
    _wait_for({summary: 0}, "process 0's merge and upper levels", c.barrier_timeout)
    return store.read_json(summary)
  _wait_for(_owners(_split_parts(parts_dir, c), process_count), "the other processes' split clusters",
            c.barrier_timeout)
  return reduce_phase(config, workdir)


def plan(config, pool_size: int, dim: int, hosts: int, devices_per_host: int) -> str:
  """A dry run of the `cluster` step at scale: memory and FLOPs per host of each stage, from the
  config's levels (no data read). Counts 2 FLOPs per multiply-add of the distance matmuls, which
  dominate; float32 throughout."""
  c = config.cluster
  check_levels(c)
  k, splits, iterations = c.n_clusters[0], c.n_splits[0], c.iterations
  rows = pool_size / hosts
  chunk = min(lloyd.chunk_rows(k), math.ceil(rows / devices_per_host))
  memory = rows * (dim + 2) * 4 + devices_per_host * (k * dim * 4 + chunk * k * 4)
  seeding = 2 * rows * dim * (k - 1) * lloyd.local_trials(k)
  lloyd_flops = 2 * rows * dim * k * iterations
  lines = [f"cluster dry run: {pool_size:,} × {dim} pool on {hosts} hosts × {devices_per_host} devices",
           f"level 1 k-means, {k:,} clusters: {memory / 2**30:,.1f} GiB per host; "
           f"seeding {seeding:.2e} FLOPs, {iterations} iterations {lloyd_flops:.2e} FLOPs per host"]
  previous = k
  if splits > 1:
    size = pool_size / k
    per_cluster = 2 * size * dim * splits * (lloyd.local_trials(splits) + iterations)
    lines.append(f"level 1 split {splits} ways ({k * splits:,} clusters): {rows * dim * 4 / 2**30:,.1f} GiB, "
                 f"{per_cluster * k / hosts:.2e} FLOPs per host")
    previous = k * splits
  for level, (n, steps, size) in enumerate(zip(c.n_clusters[1:], c.resampling_steps[1:], c.sample_sizes[1:]),
                                           start=2):
    flops = 2 * dim * n * (lloyd.local_trials(n) + iterations) * (previous + (steps - 1) * min(previous, n * size))
    lines.append(f"level {level}, {n:,} clusters of {previous:,} centroids, {steps} steps (one process): "
                 f"{previous * dim * 4 / 2**30:,.1f} GiB, {flops:.2e} FLOPs")
    previous = n
  return "\n".join(lines)
