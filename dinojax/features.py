"""Embeddings of a whole evaluation set on a multi-host mesh: every host embeds its share of the images
and ends with all of them, in the source's order. The one gather behind the k-NN and logistic
regression evaluations, the trainers' in-loop k-NN, and dino.txt's zero-shot and retrieval."""

import jax
import numpy as np
from jax.experimental import multihost_utils

from dinojax import loop, parallel
from dinojax.data import pipeline


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
    valid = np.asarray(multihost_utils.process_allgather(batch["valid"], tiled=True))
    rows = {"label": np.asarray(multihost_utils.process_allgather(batch["label"], tiled=True)),
            **{k: np.asarray(multihost_utils.process_allgather(v, tiled=True), np.float32)
               for k, v in embed(batch).items()}}
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
