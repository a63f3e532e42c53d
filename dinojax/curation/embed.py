"""The embedding job: every image of a collection -> its backbone's L2-normalised CLS token, written as
numbered shards (DINOv2 §3: all curation decisions are made on these embeddings, compared by cosine).

Process i of P embeds shards i, i+P, ... on its own devices (no collectives: hosts can run as
independent jobs, e.g. a SLURM array, given `--process_index/--process_count`). A shard is written
under a temporary name and renamed, so a killed job restarts at its first missing shard and never
writes a finished shard twice. Unreadable images are recorded in the shard's rejects file.
"""

import concurrent.futures
import functools
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import UnidentifiedImageError
from tqdm import tqdm

from dinojax import convert, hub, parallel
from dinojax.curation import store
from dinojax.data import images as image_lib
from dinojax.data import pipeline, sources
from dinojax.ops.numerics import l2_normalize

# What a decoder raises on a corrupt, truncated or missing file.
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError)

COLLECTIONS = ("pool", "queries", "evaluation")


# ---------------------------------------------------------------------------------------------------
# Collections
# ---------------------------------------------------------------------------------------------------
class Subset:
  """Items `indices` of a source, renumbered from 0 (`digits:heldout[0:180]`)."""

  def __init__(self, source, indices: range):
    self.source, self.indices = source, indices
    if hasattr(source, "paths"):
      self.paths = [source.paths[i] for i in indices]

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[self.indices[i]]


def make_collection(spec: str, digits_size: int = 32):
  """An image collection from its spec: `digits:<train|heldout>`, `folder:<root>`,
  `list:<text file of paths>`, `tfds:<name>:<split>`, each optionally sliced as `spec[a:b]`."""
  match = re.fullmatch(r"(.*?)(?:\[(-?\d*):(-?\d*)\])?", spec.strip())
  base, start, stop = match.group(1), match.group(2), match.group(3)
  kind, _, rest = base.partition(":")
  if kind == "digits":
    source = sources.make_source("digits", rest or "train", size=digits_size)
  elif kind in ("folder", "list"):
    source = sources.make_source(base, "")
  elif kind == "tfds":
    name, _, split = rest.partition(":")
    source = sources.make_source(f"tfds:{name}", split or "train")
  else:
    raise ValueError(f"Unknown image collection {spec!r}; use 'digits:<split>', 'folder:<root>', "
                     "'list:<file>' or 'tfds:<name>:<split>', optionally followed by '[start:stop]'.")
  if start is not None:
    source = Subset(source, range(len(source))[slice(int(start or 0) if start else None,
                                                     int(stop) if stop else None)])
  if len(source) == 0:
    raise ValueError(f"Image collection {spec!r} is empty.")
  return source


def key(source, index: int) -> str:
  """A human-readable name of item `index`: its path where the source has files, else the index."""
  return source.paths[index] if hasattr(source, "paths") else str(index)


def write_selection(out_dir: str, ids: np.ndarray, spec: str, digits_size: int = 32) -> None:
  """A curated subset of collection `spec`: `selected.npy` (ids) and `selected.txt` (one key a line:
  the image's path, or its index for in-memory sources)."""
  os.makedirs(out_dir, exist_ok=True)
  store.atomic_save(os.path.join(out_dir, "selected.npy"), ids)
  source = make_collection(spec, digits_size)
  store.atomic_write_text(os.path.join(out_dir, "selected.txt"),
                          "".join(key(source, int(i)) + "\n" for i in ids))


def collections(config) -> dict[str, str]:
  """The collections a config names (pool always; queries and evaluation when not empty)."""
  out = {name: config.data.get(name) or "" for name in COLLECTIONS}
  if not out["pool"]:
    raise ValueError("config.data.pool must name the uncurated image collection.")
  return {name: spec for name, spec in out.items() if spec}


def collection_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, "embeddings", name)


# ---------------------------------------------------------------------------------------------------
# Reading images
# ---------------------------------------------------------------------------------------------------
def preprocess(example: dict, size: int) -> np.ndarray:
  """The evaluation transform (resize, centre crop, ImageNet normalisation) of one example."""
  return image_lib.normalize(pipeline.eval_crop(pipeline.decode_image(example["image"]), size))


def read_images(source, indices: range, size: int, num_threads: int):
  """(ids of the readable images, their (n, size, size, 3) float32 arrays, [(id, key, error)] of the
  unreadable ones), decoding on `num_threads` threads."""

  def load(i):
    try:
      return i, preprocess(source[i], size), None
    except UNREADABLE as e:
      return i, None, f"{type(e).__name__}: {e}".replace("\t", " ").replace("\n", " ")

  with concurrent.futures.ThreadPoolExecutor(max(num_threads, 1)) as pool:
    results = list(pool.map(load, indices))
  ok = [(i, image) for i, image, _ in results if image is not None]
  rejects = [(i, key(source, i), error) for i, _, error in results if error is not None]
  for i, name, error in rejects:
    logging.warning("Unreadable image %d (%s): %s", i, name, error)
  ids = np.array([i for i, _ in ok], np.int64)
  images = np.stack([x for _, x in ok]) if ok else np.zeros((0, size, size, 3), np.float32)
  return ids, images, rejects


# ---------------------------------------------------------------------------------------------------
# The backbone, sharded over this process's devices
# ---------------------------------------------------------------------------------------------------
def build_backbone(config):
  """(model, params): a DINOv2 checkpoint if `config.model.checkpoint`, else the named hub
  architecture with random weights (announced: such embeddings only exercise the pipeline)."""
  if not config.model.checkpoint:
    logging.warning("No config.model.checkpoint: embeddings come from a randomly initialised %s; "
                    "similarities between them say little about the images.", config.model.name)
  return _backbone(config.model.name, config.model.checkpoint, config.seed, config.model.attention,
                   tuple(sorted(dict(config.model.overrides).items())))


@functools.lru_cache(maxsize=1)
def _backbone(name, checkpoint, seed, attention, overrides):
  """Loaded (or initialised) once per process: every collection and rerun in it shares the params."""
  if checkpoint:
    return convert.from_checkpoint(checkpoint, attention=attention, **dict(overrides))
  return hub.dinov2(name, seed=seed, attention=attention, **dict(overrides))


@functools.partial(jax.jit, static_argnums=0)
def _cls_embedding(model, params, images):
  """L2-normalised CLS tokens; the shardings follow the (placed) params and batch."""
  return l2_normalize(model.apply(params, images)["x_norm_clstoken"].astype(jnp.float32))


class Embedder:
  """Jitted images -> L2-normalised CLS embeddings, batch-sharded over this process's devices."""

  def __init__(self, config):
    devices = jax.local_devices()[:config.embed.num_devices or None]
    self.mesh = parallel.make_mesh(config.mesh, devices=devices)
    self.rules = tuple(tuple(r) for r in config.sharding_rules)
    self.batch_size = config.embed.batch_size
    data_devices = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    if self.batch_size % data_devices:
      raise ValueError(f"embed.batch_size {self.batch_size} does not split over {data_devices} devices.")
    self.model, params = build_backbone(config)
    self.dim = self.model.embed_dim
    sample = jnp.zeros((1, self.model.patch_size, self.model.patch_size, self.model.in_chans))
    abstract = jax.eval_shape(self.model.init, jax.random.key(0), sample)
    self.params = parallel.to_device(params, parallel.logical_to_shardings(abstract, self.mesh, self.rules))
    self.in_sharding = parallel.batch_sharding(self.mesh, self.rules, ndim=4)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) float32 -> (n, D) float32, in fixed-size batches (the last one padded)."""
    out = []
    b = self.batch_size
    with parallel.activation_sharding(self.mesh, self.rules):
      for start in range(0, len(images), b):
        chunk = images[start:start + b]
        padded = np.concatenate([chunk, np.zeros((b - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        batch = jax.device_put(padded, self.in_sharding)
        out.append(np.asarray(_cls_embedding(self.model, self.params, batch))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


# ---------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------
def write_shard(shards: store.EmbeddingShards, shard: int, ids: np.ndarray, vectors: np.ndarray,
                rejects: list) -> None:
  """Ids and rejects first, embeddings last: the embeddings file marks the shard finished."""
  store.atomic_save(shards.path("ids", shard), ids)
  if rejects:
    store.atomic_write_text(shards.path("rejects", shard),
                            "".join(f"{i}\t{k}\t{e}\n" for i, k, e in rejects))
  store.atomic_save(shards.path("embeddings", shard), vectors.astype(np.float32))


def _manifest(config, spec: str, num_images: int) -> dict:
  return {"source": spec, "num_images": num_images, "shard_size": config.embed.shard_size,
          "num_shards": math.ceil(num_images / config.embed.shard_size),
          "image_size": config.data.image_size, "model": config.model.name,
          "checkpoint": config.model.checkpoint, "overrides": dict(config.model.overrides),
          "seed": config.seed}


def check_or_write_manifest(shards: store.EmbeddingShards, manifest: dict) -> None:
  """Records the settings of a new embedding directory, or refuses to continue one made with others."""
  path = os.path.join(shards.directory, store.MANIFEST)
  if os.path.exists(path):
    old = store.read_json(path)
    changed = {k: (old.get(k), v) for k, v in manifest.items() if k != "dim" and old.get(k) != v}
    if changed:
      raise ValueError(f"{shards.directory} holds embeddings made with other settings {changed} "
                       "(old, new); use a fresh --workdir or restore the settings.")
    return
  os.makedirs(shards.directory, exist_ok=True)
  store.write_json(path, manifest)


def embed_collection(config, name: str, spec: str, workdir: str, embedder_fn, process_index: int,
                     process_count: int, source=None) -> store.EmbeddingShards:
  """Embeds this process's unfinished shards of one collection: `source` (any source of {"image"}
  items, e.g. image–caption pairs) or, by default, the image collection `spec` names."""
  source = make_collection(spec, config.data.image_size) if source is None else source
  shards = store.EmbeddingShards(collection_dir(workdir, name))
  manifest = _manifest(config, spec, len(source))
  check_or_write_manifest(shards, manifest)
  size, n = manifest["shard_size"], manifest["num_images"]
  todo = [s for s in store.owned(manifest["num_shards"], process_index, process_count)
          if not shards.done(s)]
  if not todo:
    return shards
  embedder = embedder_fn()
  total = sum(min(size, n - s * size) for s in todo)

  def read(s):
    return read_images(source, range(s * size, min((s + 1) * size, n)), config.data.image_size,
                       config.embed.num_threads)

  # Decoding the next shard overlaps embedding the current one.
  with tqdm(total=total, unit="img", desc=f"embed {name} (process {process_index}/{process_count})",
            dynamic_ncols=True, mininterval=1.0) as bar, \
       concurrent.futures.ThreadPoolExecutor(1) as reader:
    pending = reader.submit(read, todo[0])
    for i, s in enumerate(todo):
      ids, images, rejects = pending.result()
      if i + 1 < len(todo):
        pending = reader.submit(read, todo[i + 1])
      write_shard(shards, s, ids, embedder(images), rejects)
      bar.update(len(ids) + len(rejects))
  return shards


def summarize(shards: store.EmbeddingShards) -> dict | None:
  """When every shard is finished: `rejects.tsv` (all unreadable images) and `summary.json`."""
  if shards.missing():
    return None
  rejects = shards.rejects()
  store.atomic_write_text(os.path.join(shards.directory, "rejects.tsv"),
                          "".join(f"{i}\t{k}\t{e}\n" for i, k, e in rejects))
  embedded = sum(len(np.load(shards.path("ids", s), mmap_mode="r")) for s in range(shards.num_shards))
  first = np.load(shards.path("embeddings", 0), mmap_mode="r")
  summary = {"num_images": shards.manifest["num_images"], "embedded": embedded,
             "rejected": len(rejects), "dim": int(first.shape[1]), "num_shards": shards.num_shards}
  store.write_json(os.path.join(shards.directory, "summary.json"), summary)
  return summary


def run(config, workdir: str, process_index: int = 0, process_count: int = 1) -> dict:
  """Embeds every collection the config names; returns {name: summary or None if other processes'
  shards are still missing}."""
  embedder = None

  def get_embedder():
    nonlocal embedder
    embedder = embedder or Embedder(config)
    return embedder

  out = {}
  for name, spec in collections(config).items():
    shards = embed_collection(config, name, spec, workdir, get_embedder, process_index, process_count)
    out[name] = summarize(shards)
    if out[name] is None:
      logging.info("embed %s: this process's shards are done; %d shards of other processes are "
                   "still missing.", name, len(shards.missing()))
    else:
      logging.info("embed %s: %s", name, out[name])
  return out
