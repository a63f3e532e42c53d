"""k-means as facebookresearch/ssl-data-curation computes it (Vo et al., 2024, §4), with the rows
sharded over a mesh: every device (on every host) holds a slice of the pool, and only centroids,
candidates and per-cluster sums travel.

Seeding is greedy k-means++ (Arthur & Vassilvitskii, 2007; the variant of scikit-learn that the
official code adapts): the first centre is a uniformly random row; each further one is the best of
`2 + ⌊ln k⌋` candidates drawn with probability proportional to the squared distance to the closest
centre so far, best meaning the lowest total squared distance once it is added. The random numbers
are NumPy's `RandomState(seed)` in the official order (one `randint(n)`, then `trials` uniforms per
centre), so any restatement with the same seed picks the same rows.

A Lloyd iteration assigns every row to its nearest centroid (squared Euclidean distance by a matmul,
in row chunks of `chunk` so a chunk × k block fits) and moves each centroid to the mean of its rows,
an empty cluster keeping its centroid; the per-cluster sums and counts are one all-reduce. The
official runs a fixed number of iterations, no tolerance.

Resumable: with `state_dir`, seeding saves its state every `checkpoint_every` centres and every
iteration saves its centroids, so a restarted job continues where the last one stopped.
"""

import dataclasses
import functools
import glob
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dinojax.curation import store

DISTANCE_BLOCK = 1 << 26


def local_trials(n_clusters: int) -> int:
  """Candidates per k-means++ centre, as scikit-learn and the official code: 2 + ⌊ln k⌋."""
  return 2 + int(np.log(n_clusters))


@dataclasses.dataclass(frozen=True)
class Rows:
  """A pool's rows sharded over every axis of `mesh`: `x` (N_pad, D) float32 and `valid` (N_pad,)
  float32 (0 on padding). Each process pads its own rows at the end of its slice, so the real rows
  keep their order (process by process) and `num_rows` of them are real."""
  x: jax.Array
  valid: jax.Array
  num_rows: int
  mesh: Mesh
  chunk: int

  @property
  def axes(self) -> tuple[str, ...]:
    return tuple(self.mesh.axis_names)

  @property
  def processes(self) -> int:
    """The JAX processes whose devices hold rows: 1 for a k-means within one process."""
    return _processes(self.mesh)

  def replicated(self, array) -> jax.Array:
    """`array` (the same in every process) on every device of the mesh. The programs' arguments are
    all placed explicitly, so each compiles once whatever produced them (a file, another program)."""
    array = np.asarray(array)
    return jax.make_array_from_process_local_data(NamedSharding(self.mesh, P()), array, array.shape)


def _processes(mesh: Mesh) -> int:
  return len({d.process_index for d in mesh.devices.flat})


def shard_rows(local_rows: np.ndarray, mesh: Mesh, chunk: int, bucket: bool = False) -> Rows:
  """Places this process's rows (n_p, D) on its devices of `mesh`; collective over processes.
  Every device's slice is padded to a whole number of `chunk`-row chunks, and with `bucket` to a
  power of two rows (many arrays of different sizes then share a few compiled programs)."""
  local_rows = np.asarray(local_rows, np.float32)
  processes = _processes(mesh)
  counts = np.array([len(local_rows)])
  if processes > 1:
    counts = np.asarray(multihost_utils.process_allgather(np.int64(len(local_rows)))).reshape(-1)
  local_devices = mesh.devices.size // processes
  per_device = max(1, math.ceil(int(counts.max()) / local_devices))
  if bucket:
    per_device = 1 << (per_device - 1).bit_length()
  chunk = max(1, min(chunk, per_device))
  per_process = local_devices * chunk * math.ceil(per_device / chunk)
  pad = per_process - len(local_rows)
  sharding = NamedSharding(mesh, P(tuple(mesh.axis_names)))
  rows_sharding = NamedSharding(mesh, P(tuple(mesh.axis_names), None))
  total = per_process * processes
  x = jax.make_array_from_process_local_data(
      rows_sharding, np.concatenate([local_rows, np.zeros((pad, local_rows.shape[1]), np.float32)]),
      (total, local_rows.shape[1]))
  valid = jax.make_array_from_process_local_data(
      sharding, np.concatenate([np.ones(len(local_rows), np.float32), np.zeros(pad, np.float32)]), (total,))
  return Rows(x=x, valid=valid, num_rows=int(counts.sum()), mesh=mesh, chunk=chunk)


# ---------------------------------------------------------------------------------------------------
# Per-device pieces (inside shard_map: `x` is this device's slice, collectives over `axes`)
# ---------------------------------------------------------------------------------------------------
def _sqdist(x, c):
  """‖x − c‖² as the official computes it: ‖x‖² − 2·x·c + ‖c‖²."""
  return (jnp.sum(x * x, 1)[:, None] - 2 * jnp.dot(x, c.T, precision="highest")
          + jnp.sum(c * c, 1)[None, :])


def _global_searchsorted(weights, values, axes):
  """For each value v, the global index of the first row whose inclusive prefix sum of `weights`
  reaches v (NumPy's searchsorted, side="left", on the cumulative sum): a local cumsum plus the
  totals of the devices before this one, and one psum of the per-device counts."""
  cumulative = jnp.cumsum(weights)
  totals = jax.lax.all_gather(cumulative[-1], axes, tiled=False).reshape(-1)
  before = jnp.sum(jnp.where(jnp.arange(totals.shape[0]) < jax.lax.axis_index(axes), totals, 0))
  below = (before + cumulative)[None, :] < values[:, None]
  return jax.lax.psum(jnp.sum(below, 1, dtype=jnp.int32), axes)


def _take_rows(x, index, axes):
  """Rows at global indices `index` (replicated), gathered from the devices that hold them."""
  start = jax.lax.axis_index(axes) * x.shape[0]
  local = index - start
  mine = (local >= 0) & (local < x.shape[0])
  return jax.lax.psum(jnp.where(mine[:, None], x[jnp.clip(local, 0, x.shape[0] - 1)], 0), axes)


def _last_valid(valid, axes):
  start = jax.lax.axis_index(axes) * valid.shape[0]
  return jax.lax.pmax(jnp.max(jnp.where(valid > 0, start + jnp.arange(valid.shape[0]), -1)), axes)


def _first_centre(x, valid, centres, first, axes):
  """The `first`-th real row as centre 0; (centres, closest squared distances, potential)."""
  index = _global_searchsorted(valid.astype(jnp.int32), first[None] + 1, axes)
  centre = _take_rows(x, index, axes)
  closest = _sqdist(x, centre)[:, 0] * valid
  return centres.at[0].set(centre[0]), closest, jax.lax.psum(jnp.sum(closest), axes)


def _seed_block(x, valid, centres, closest, pot, uniforms, start, stop, axes):
  """Centres start..stop-1 of greedy k-means++; `uniforms[c - 1]` are centre c's draws."""
  last = _last_valid(valid, axes)

  def add_centre(c, state):
    centres, closest, pot = state
    candidates = jnp.minimum(_global_searchsorted(closest, uniforms[c - 1] * pot, axes), last)
    rows = _take_rows(x, candidates, axes)
    closest_if = jnp.minimum(closest[:, None], _sqdist(x, rows)) * valid[:, None]
    pots = jax.lax.psum(jnp.sum(closest_if, 0), axes)
    best = jnp.argmin(pots)
    return centres.at[c].set(rows[best]), closest_if[:, best], pots[best]

  return jax.lax.fori_loop(start, stop, add_centre, (centres, closest, pot))


def _lloyd_iteration(x, valid, centroids, chunk, axes):
  """One assignment + mean update; the sums and counts of all devices in one psum."""
  k, d = centroids.shape

  def add_chunk(sums, rows):
    xc, vc = rows
    labels = jnp.argmin(_sqdist(xc, centroids), 1)
    return sums + jax.ops.segment_sum(jnp.concatenate([xc * vc[:, None], vc[:, None]], 1), labels, k), None

  chunks = (x.reshape(-1, chunk, d), valid.reshape(-1, chunk))
  sums, _ = jax.lax.scan(add_chunk, jnp.zeros((k, d + 1), jnp.float32), chunks)
  sums = jax.lax.psum(sums, axes)
  counts = sums[:, d:]
  return jnp.where(counts > 0, sums[:, :d] / jnp.maximum(counts, 1), centroids)


# ---------------------------------------------------------------------------------------------------
# The programs (jitted once per shape and mesh)
# ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _programs(mesh: Mesh, chunk: int):
  """The jitted pieces for rows sharded over every axis of `mesh`; built once per (mesh, chunk), so
  the many small k-means of upper levels and splits reuse their compilations."""
  axes = tuple(mesh.axis_names)
  row_spec, vector_spec = P(axes, None), P(axes)
  mapped = lambda f, ins, outs: jax.jit(jax.shard_map(f, mesh=mesh, in_specs=ins,  # noqa: E731
                                                      out_specs=outs, check_vma=False))
  first = mapped(lambda x, v, c, i: _first_centre(x, v, c, i, axes),
                 (row_spec, vector_spec, P(), P()), (P(), vector_spec, P()))
  seed = mapped(lambda x, v, c, cl, pot, u, a, b: _seed_block(x, v, c, cl, pot, u, a, b, axes),
                (row_spec, vector_spec, P(), vector_spec, P(), P(), P(), P()), (P(), vector_spec, P()))
  iterate = mapped(lambda x, v, c: _lloyd_iteration(x, v, c, chunk, axes),
                   (row_spec, vector_spec, P()), P())
  return first, seed, iterate


# ---------------------------------------------------------------------------------------------------
# State files
# ---------------------------------------------------------------------------------------------------
def _replicated(array: jax.Array) -> np.ndarray:
  return np.asarray(array.addressable_data(0))


def _local_part(array: jax.Array) -> np.ndarray:
  """This process's rows of a row-sharded array, in global order."""
  shards = {s.index[0].start or 0: s.data for s in array.addressable_shards}
  return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def _latest(state_dir: str, pattern: str) -> int | None:
  steps = [int(m.group(1)) for p in glob.glob(os.path.join(state_dir, pattern.replace("{}", "*")))
           if (m := re.fullmatch(pattern.replace("{}", r"(\d+)"), os.path.basename(p)))]
  return max(steps) if steps else None


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _save_seeding(state_dir, count, centres, closest, pot) -> None:
  """Seeding after `count` centres: each process's closest distances, then (all written) the
  centres, whose file marks the state complete; older states are removed afterwards."""
  process = jax.process_index()
  store.atomic_save(os.path.join(state_dir, f"seeding-{count:09d}-closest-{process:05d}.npy"),
                    _local_part(closest))
  _sync(f"kmeans seeding {count} parts")
  if process == 0:
    store.atomic_savez(os.path.join(state_dir, f"seeding-{count:09d}.npz"), centres=_replicated(centres),
                       pot=_replicated(pot))
  _sync(f"kmeans seeding {count} done")
  for path in glob.glob(os.path.join(state_dir, "seeding-*")):
    step, _, rest = os.path.basename(path)[len("seeding-"):].partition("-")
    step = step.split(".")[0]
    mine = rest == "" and process == 0 or rest == f"closest-{process:05d}.npy"
    if mine and int(step) < count:
      os.remove(path)


def _seed(rows: Rows, n_clusters: int, seed: int, state_dir: str | None, checkpoint_every: int, first, block):
  """Greedy k-means++ centres (k, D), continuing a saved seeding state if there is one."""
  random_state = np.random.RandomState(seed)
  first_row = random_state.randint(rows.num_rows)
  uniforms = rows.replicated(
      random_state.uniform(size=(max(n_clusters - 1, 1), local_trials(n_clusters))).astype(np.float32))
  centres = rows.replicated(np.zeros((n_clusters, rows.x.shape[1]), np.float32))
  done = _latest(state_dir, "seeding-{}.npz") if state_dir else None
  if done is None:
    centres, closest, pot = first(rows.x, rows.valid, centres, rows.replicated(np.int32(first_row)))
    done = 1
  else:
    saved = np.load(os.path.join(state_dir, f"seeding-{done:09d}.npz"))
    centres, pot = rows.replicated(saved["centres"]), rows.replicated(saved["pot"])
    local = np.load(os.path.join(state_dir, f"seeding-{done:09d}-closest-{jax.process_index():05d}.npy"))
    closest = jax.make_array_from_process_local_data(rows.valid.sharding, local, rows.valid.shape)
    logging.info("k-means++: resuming after %d of %d centres.", done, n_clusters)
  while done < n_clusters:
    stop = min(n_clusters, (done // checkpoint_every + 1) * checkpoint_every) if state_dir else n_clusters
    centres, closest, pot = block(rows.x, rows.valid, centres, closest, pot, uniforms,
                                  rows.replicated(np.int32(done)), rows.replicated(np.int32(stop)))
    done = stop
    if state_dir:
      _save_seeding(state_dir, done, centres, closest, pot)
  return centres


def _compile_on_every_process(rows: Rows, n_clusters: int, programs) -> None:
  """Compiles the programs for these shapes, and returns once every process has. The first run of
  a cross-process collective waits only 30 s for the other processes (gloo's rendezvous), and one
  process can compile for longer than that (`dinojax.loop.compiled_on_every_process`)."""
  first, block, iterate = programs
  replicated = NamedSharding(rows.mesh, P())
  shape = lambda *s, dtype=jnp.float32: jax.ShapeDtypeStruct(s, dtype, sharding=replicated)  # noqa: E731
  centres, index = shape(n_clusters, rows.x.shape[1]), shape(dtype=jnp.int32)
  uniforms = shape(max(n_clusters - 1, 1), local_trials(n_clusters))
  first.lower(rows.x, rows.valid, centres, index).compile()
  block.lower(rows.x, rows.valid, centres, rows.valid, shape(), uniforms, index, index).compile()
  iterate.lower(rows.x, rows.valid, centres).compile()
  _sync("kmeans compiled")


def fit(rows: Rows, n_clusters: int, iterations: int, seed: int, state_dir: str | None = None,
        checkpoint_every: int = 10_000) -> np.ndarray:
  """Centroids (n_clusters, D) float32 of k-means on `rows`: greedy k-means++ seeding, then
  `iterations` Lloyd iterations. With `state_dir`, resumes from (and saves) per-iteration state."""
  if not 1 <= n_clusters <= rows.num_rows:
    raise ValueError(f"k-means with {n_clusters} clusters needs 1 <= k <= the {rows.num_rows} points.")
  if iterations < 0 or checkpoint_every < 1:
    raise ValueError(f"iterations must be >= 0 and checkpoint_every >= 1, got {iterations}, {checkpoint_every}.")
  first, block, iterate = programs = _programs(rows.mesh, rows.chunk)
  if rows.processes > 1:
    _compile_on_every_process(rows, n_clusters, programs)
  if state_dir:
    os.makedirs(state_dir, exist_ok=True)
  done = _latest(state_dir, "centroids-{}.npy") if state_dir else None
  if done is None:
    centroids = _seed(rows, n_clusters, seed, state_dir, checkpoint_every, first, block)
    done = 0
  else:
    centroids = rows.replicated(np.load(os.path.join(state_dir, f"centroids-{done:04d}.npy")))
    logging.info("k-means: resuming after %d of %d iterations.", done, iterations)
  for step in range(done, iterations):
    # One iteration in flight at a time: queued collective programs can starve XLA:CPU's thread pool.
    centroids = iterate(rows.x, rows.valid, centroids).block_until_ready()
    if state_dir and jax.process_index() == 0:
      store.atomic_save(os.path.join(state_dir, f"centroids-{step + 1:04d}.npy"), _replicated(centroids))
  return _replicated(centroids)


def chunk_rows(n_clusters: int) -> int:
  """Rows assigned at once: a chunk × k distance block of 2^26 floats (256 MB), as the official
  sizes its chunks by the number of clusters."""
  return max(1, DISTANCE_BLOCK // n_clusters)


@functools.lru_cache(maxsize=None)
def _local_mesh() -> Mesh:
  return jax.make_mesh((jax.local_device_count(),), ("rows",), devices=jax.local_devices())


def kmeans(x: np.ndarray, n_clusters: int, iterations: int, seed: int) -> np.ndarray:
  """k-means of an array this process holds whole (upper levels, resampled points, one cluster's
  split), its rows sharded over this process's devices and padded to a power of two."""
  return fit(shard_rows(x, _local_mesh(), chunk_rows(n_clusters), bucket=True), n_clusters, iterations, seed)
