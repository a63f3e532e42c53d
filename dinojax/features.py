"""Embeddings on a multi-host mesh that every host ends with whole, in order: of a whole evaluation set,
each host embedding its share of the images (`embed_dataset`), or of rows every host holds (prompts,
a few fixed images: `global_rows`, then `gather_rows`). The one gather behind the k-NN and logistic
regression evaluations, dino.txt's zero-shot and retrieval, and the pictures of the features."""

import jax
import numpy as np
from jax.experimental import multihost_utils

from dinojax import loop, parallel
from dinojax.data import pipeline


def global_rows(rows: np.ndarray, mesh, rules) -> jax.Array:
  """`rows`, the same on every host, as one array split over the mesh's batch axes, padded with copies
  of the first row to split evenly: the input of an embedding that `gather_rows` brings back whole."""
  pad = -len(rows) % parallel.batch_shards(mesh, rules)
  padded = np.concatenate([rows, np.repeat(rows[:1], pad, axis=0)])
  return jax.make_array_from_callback(padded.shape, parallel.batch_sharding(mesh, rules, padded.ndim),
                                      lambda index: padded[index])


def gather_rows(x: jax.Array, count: int | None = None) -> np.ndarray:
  """Every row of an array laid out over the mesh (its first `count`), on every host, in order."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))[:count]


def embed_dataset(batches, embed, mesh, rules) -> dict:
  """{"label", and each output of `embed`} (float32) for the valid rows of `batches`, this host's share
  of one ordered pass of `pipeline.eval_dataset` (or a dataset built on it): `embed(batch) -> {name:
  (b, ...)}` runs on the global batch, laid out on the mesh. Every host gets every row, in the
  source's order whatever the number of hosts."""
  hosts = jax.process_count()
  gathered, indices = {}, []
  for step, local in enumerate(batches):
    batch = loop.global_batch(local, {k: parallel.batch_sharding(mesh, rules, np.ndim(v))
                                      for k, v in local.items()})
    valid = gather_rows(batch["valid"])
    rows = {"label": gather_rows(batch["label"]),
            **{k: gather_rows(v).astype(np.float32) for k, v in embed(batch).items()}}
    for k, v in rows.items():
      gathered.setdefault(k, []).append(v[valid])
    # Row r came from host r // per_host, which reads every hosts-th image of the source.
    per_host, r = len(local["valid"]), np.arange(len(valid))
    indices.append(((step * per_host + r % per_host) * hosts + r // per_host)[valid])
  order = np.argsort(np.concatenate(indices))
  return {k: np.concatenate(v)[order] for k, v in gathered.items()}


def extract_features(embed, params, source, batch_size: int, image_size: int, mesh, rules,
                     resize: int | None = None):
  """(features, labels) of every image of `source` under the evaluation transform (`resize`: see
  `pipeline.eval_crop`), `embed(params, images)` run on the mesh over global batches of
  `batch_size`; every host ends with the whole set, in order (`embed_dataset`)."""
  hosts = jax.process_count()
  batches = pipeline.eval_dataset(source, batch_size // hosts, image_size, jax.process_index(), hosts,
                                  resize=resize)
  out = embed_dataset(batches, lambda batch: {"features": embed(params, batch["image"])}, mesh, rules)
  return out["features"], out["label"]
