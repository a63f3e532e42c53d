"""Weighted k-NN classification on frozen features, DINO's protocol (the official
`dinov2/eval/knn.py`): L2-normalised CLS features compared by cosine similarity, the k nearest
training images vote for their class with weight exp(similarity / T); optionally also with a few
training images per class (`few_shot_knn_accuracies`, the official `--n-per-class-list`).

Used during pretraining (the `knn` evaluation, `KNN`, k = 20) and as the `knn_eval` job on any backbone:

  python -m dinojax.main --config configs/knn_eval.py:vitl14_reg --workdir workdir/knn_l14 \
      --config.backbone.checkpoint=dinov2_vitl14_reg4_pretrain.pth
"""

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dinojax import backbones, features, loop, parallel
from dinojax.data import sources
from dinojax.models.vit import ViT


def knn_votes(train_features: jax.Array, train_labels: jax.Array, test_features: jax.Array,
              num_classes: int, ks: Sequence[int], temperature: float) -> dict:
  """{k: class scores (num_test, num_classes)} for L2-normalised features: the similarity-weighted
  votes of the k nearest training images, for every k from one search of the largest."""
  k_max = min(max(ks), train_features.shape[0])
  top_sim, top_idx = jax.lax.top_k(test_features @ train_features.T, k_max)
  weights, labels = jnp.exp(top_sim / temperature), train_labels[top_idx]
  rows = jnp.arange(test_features.shape[0])[:, None]
  zeros = jnp.zeros((test_features.shape[0], num_classes), weights.dtype)
  return {k: zeros.at[rows, labels[:, :k]].add(weights[:, :k]) for k in ks}


def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_accuracies(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                   test_labels: np.ndarray, num_classes: int, ks: Sequence[int] = (20,),
                   temperature: float = 0.07, chunk: int = 1024) -> dict:
  """{k: {"top1", "top5"}} (fractions) of weighted k-NN, the test set in chunks (top-5 is top-C
  with fewer than 5 classes)."""
  train = jnp.asarray(_normalize(train_features))
  labels = jnp.asarray(train_labels)
  top = min(5, num_classes)
  # The training set is an argument, not a closed-over constant: ImageNet's is gigabytes.
  score = jax.jit(lambda train, labels, feats, true: {
      k: (s.argmax(-1) == true, (jax.lax.top_k(s, top)[1] == true[:, None]).any(-1))
      for k, s in knn_votes(train, labels, feats, num_classes, ks, temperature).items()})
  hits = {k: np.zeros(2) for k in ks}
  for start in range(0, len(test_features), chunk):
    feats = jnp.asarray(_normalize(test_features[start:start + chunk]))
    true = jnp.asarray(test_labels[start:start + chunk])
    for k, (top1, top5) in score(train, labels, feats, true).items():
      hits[k] += (int(top1.sum()), int(top5.sum()))
  count = max(len(test_features), 1)
  return {k: {"top1": h[0] / count, "top5": h[1] / count} for k, h in hits.items()}


def few_shot_indices(labels: np.ndarray, n_per_class: int, seed: int) -> np.ndarray:
  """The training rows one try of the few-shot k-NN keeps (the official `filter_train`): for each
  class in increasing label order, the first `n_per_class` of a random permutation of its rows (all of
  them when it has fewer), drawn in turn from one generator seeded with the try's index. The official
  draws with `torch.randperm`, this with NumPy's default generator: other samples of the same law."""
  rng = np.random.default_rng(seed)
  kept = []
  for label in np.unique(labels):
    rows = np.flatnonzero(labels == label)
    kept.append(rows[rng.permutation(len(rows))[:n_per_class]])
  return np.concatenate(kept)


def few_shot_knn_accuracies(train_features: np.ndarray, train_labels: np.ndarray,
                            test_features: np.ndarray, test_labels: np.ndarray, num_classes: int,
                            n_per_class: int, n_tries: int = 1, ks: Sequence[int] = (20,),
                            temperature: float = 0.07) -> dict:
  """{k: {"top1", "top5"}} of k-NN on `n_per_class` training images per class, the mean over
  `n_tries` tries (try t samples with seed t, `few_shot_indices`), as the official `--n-per-class-list`
  with `--n-tries`: k runs over the `ks` not above `n_per_class`, and `n_per_class` itself."""
  ks = sorted(k for k in {*ks, n_per_class} if k <= n_per_class)
  tries = []
  for seed in range(n_tries):
    rows = few_shot_indices(train_labels, n_per_class, seed)
    tries.append(knn_accuracies(train_features[rows], train_labels[rows], test_features, test_labels,
                                num_classes, ks, temperature))
  return {k: {name: float(np.mean([t[k][name] for t in tries])) for name in ("top1", "top5")}
          for k in ks}


def cls_features(backbone: ViT):
  """`embed(params, images)`: the backbone's CLS tokens after the final norm, jitted."""
  return jax.jit(lambda p, x: backbone.apply({"params": p}, x)["x_norm_clstoken"])


def frozen_backbone(config, mesh, rules):
  """(backbone, params, source name) of the evaluation jobs' frozen backbone (`config.backbone`:
  released, a run's workdir, or random)."""
  backbone = backbones.build_backbone(config)
  if config.image_size % backbone.patch_size:
    raise ValueError(f"image_size={config.image_size} is not a multiple of the backbone's patch size "
                     f"{backbone.patch_size}.")
  params, backbone_source = backbones.init_backbone(config, backbone, mesh, rules)
  return backbone, params, backbone_source


def cls_embedder(config, mesh, rules):
  """(embed(params, images) -> CLS tokens after the final norm, params, source name) of the
  evaluation jobs' frozen backbone (`frozen_backbone`)."""
  backbone, params, backbone_source = frozen_backbone(config, mesh, rules)
  return cls_features(backbone), params, backbone_source


class KNN:
  """`knn(backbone_params) -> {"knn_top1"}`: weighted k-NN top-1 (k = `knn_k`, `knn_temperature`) of
  the CLS features of `source`'s `heldout_split` against its `train_split`, embedded in global
  batches of `batch_size` at `image_size` (the `evaluators.base` protocol; the sources are read on
  first use). `features` is what the `knn_eval` job scores its several k and few-shot subsets on."""

  def __init__(self, *, source: str, train_split: str, heldout_split: str, batch_size: int,
               backbone: ViT, image_size: int, mesh, rules, knn_k: int = 20,
               knn_temperature: float = 0.07):
    self.source, self.splits = source, (train_split, heldout_split)
    self.batch_size, self.image_size, self.mesh, self.rules = batch_size, image_size, mesh, rules
    self.knn_k, self.knn_temperature = knn_k, knn_temperature
    self.embed = cls_features(backbone)
    self._sources = None

  @property
  def num_classes(self) -> int:
    return self._open()[0].num_classes

  def _open(self):
    if self._sources is None:
      self._sources = tuple(sources.make_source(self.source, split) for split in self.splits)
    return self._sources

  def features(self, params) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((features, labels) of the training split, the same of the held-out split), every image on
    every host, in order."""
    out = tuple(features.extract_features(self.embed, params, source, self.batch_size, self.image_size,
                                          self.mesh, self.rules) for source in self._open())
    for split, (feats, _) in zip(self.splits, out):
      if not len(feats):
        raise ValueError(f"No readable image in split {split!r} of {self.source!r}.")
    return out

  def __call__(self, params) -> dict:
    train, heldout = self.features(params)
    k = self.knn_k
    accuracy = knn_accuracies(*train, *heldout, self.num_classes, (k,), self.knn_temperature)
    return {"knn_top1": accuracy[k]["top1"]}


# ---------------------------------------------------------------------------------------------------
# The `knn_eval` job
# ---------------------------------------------------------------------------------------------------
def run(config, workdir: str) -> dict:
  """k-NN top-1/top-5 of a frozen backbone's CLS features for every `knn.k`, on the whole training
  split and on each few-shot subset of `knn.n_per_class`, logged and written to
  WORKDIR/results_eval_knn.json."""
  os.makedirs(workdir, exist_ok=True)
  if not len(config.knn.k) or min(config.knn.k) < 1:
    raise ValueError(f"knn.k={tuple(config.knn.k)} must list positive neighbour counts.")
  subsets = tuple(config.knn.n_per_class)
  if not subsets or any(n != -1 and n < 1 for n in subsets):
    raise ValueError(f"knn.n_per_class={subsets} must list -1 (the whole training split) or positive "
                     "image counts per class.")
  if config.knn.n_tries < 1:
    raise ValueError(f"knn.n_tries={config.knn.n_tries} must be at least 1.")
  mesh, rules = loop.make_mesh(config)
  backbone, params, backbone_source = frozen_backbone(config, mesh, rules)
  evaluator = KNN(source=config.data.source, train_split=config.data.train_split,
                  heldout_split=config.data.val_split, batch_size=config.batch_size, backbone=backbone,
                  image_size=config.image_size, mesh=mesh, rules=rules,
                  knn_temperature=config.knn.temperature)
  with parallel.activation_sharding(mesh, rules):
    train, val = evaluator.features(params)
  num_classes = evaluator.num_classes
  ks, temperature = tuple(config.knn.k), config.knn.temperature
  report = {"backbone": backbone_source, "train_images": len(train[0]), "validation_images": len(val[0]),
            "temperature": temperature}
  metrics = {}
  if -1 in subsets:
    results = knn_accuracies(*train, *val, num_classes, ks, temperature)
    report["accuracy"] = {str(k): r for k, r in results.items()}
    metrics.update({f"knn_{k}_{name}": v for k, r in results.items() for name, v in r.items()})
    logging.info("k-NN (%s): %s", backbone_source,
                 ", ".join(f"k={k}: {100 * r['top1']:.2f}%" for k, r in results.items()))
  for n in sorted(n for n in set(subsets) if n > 0):
    results = few_shot_knn_accuracies(*train, *val, num_classes, n, config.knn.n_tries,
                                      ks, temperature)
    report.setdefault("few_shot", {"tries": config.knn.n_tries})[str(n)] = {
        str(k): r for k, r in results.items()}
    metrics.update({f"knn_{n}_per_class_{k}_{name}": v for k, r in results.items()
                    for name, v in r.items()})
    logging.info("k-NN, %d per class (%d tries): %s", n, config.knn.n_tries,
                 ", ".join(f"k={k}: {100 * r['top1']:.2f}%" for k, r in results.items()))
  loop.log_metrics(0, metrics)
  loop.MetricWriter(workdir).write(0, metrics)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results_eval_knn.json"), "w") as f:
      json.dump(report, f, indent=1)
  return metrics
