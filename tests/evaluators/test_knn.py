"""Weighted k-NN against a NumPy reference, and the `knn_eval` job's errors (the job itself runs on
an SSL run in tests/trainers/test_ssl.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

import jobs
from dinojax import config_args, loop, parallel
from dinojax.data import sources
from dinojax.evaluators import knn
from dinojax.features import extract_features

CONFIG = f"{jobs.REPO / 'configs/knn_eval.py'}:tiny"


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_votes_are_the_similarity_weighted_labels_of_the_nearest_neighbours():
  rng = np.random.default_rng(0)
  train, test = _unit(rng.normal(size=(30, 6))), _unit(rng.normal(size=(7, 6)))
  labels, classes, temperature = rng.integers(0, 4, 30), 4, 0.07
  votes = knn.knn_votes(jnp.asarray(train), jnp.asarray(labels), jnp.asarray(test), classes, (1, 5, 30),
                        temperature)
  sims = test @ train.T
  for k in (1, 5, 30):
    expected = np.zeros((7, classes))
    for i in range(7):
      for j in np.argsort(-sims[i])[:k]:
        expected[i, labels[j]] += np.exp(sims[i, j] / temperature)
    np.testing.assert_allclose(np.asarray(votes[k]), expected, rtol=1e-4)


def test_accuracies_for_several_k_in_chunks():
  # Two tight clusters; test points sit in them, so k=1 is always right, and k larger than the
  # training set (8) takes every image, where the nearer cluster still wins by its weights.
  rng = np.random.default_rng(1)
  centres = np.eye(3)[:2]
  train = np.concatenate([c + 0.01 * rng.normal(size=(4, 3)) for c in centres])
  labels = np.repeat([0, 1], 4)
  test = np.concatenate([c + 0.01 * rng.normal(size=(5, 3)) for c in centres])
  truth = np.repeat([0, 1], 5)
  out = knn.knn_accuracies(train, labels, test, truth, num_classes=2, ks=(1, 20), chunk=3)
  assert out == {1: {"top1": 1.0, "top5": 1.0}, 20: {"top1": 1.0, "top5": 1.0}}
  wrong = knn.knn_accuracies(train, labels, test, 1 - truth, num_classes=2, ks=(1,))
  assert wrong[1]["top1"] == 0.0 and wrong[1]["top5"] == 1.0  # top-"5" of 2 classes holds both


def _numpy_knn_hits(train, labels, test, truth, classes, k, temperature):
  """(top-1, top-5) fractions of weighted k-NN, restated: equal votes rank the lower class first
  (`lax.top_k`'s order)."""
  sims = _unit(test) @ _unit(train).T
  top1 = top5 = 0
  for i in range(len(test)):
    votes = np.zeros(classes)
    for j in np.argsort(-sims[i])[:k]:
      votes[labels[j]] += np.exp(sims[i, j] / temperature)
    ranked = np.argsort(-votes, kind="stable")
    top1 += ranked[0] == truth[i]
    top5 += truth[i] in ranked[:5]
  return top1 / len(test), top5 / len(test)


def test_few_shot_knn_averages_tries_on_n_images_per_class():
  rng = np.random.default_rng(2)
  classes, n, tries, temperature = 7, 3, 4, 0.07
  labels = np.concatenate([rng.integers(0, 6, 60), [6, 6]])  # class 6 has fewer than n images
  train, test, truth = rng.normal(size=(62, 5)), rng.normal(size=(25, 5)), rng.integers(0, classes, 25)
  got = knn.few_shot_knn_accuracies(train, labels, test, truth, classes, n, tries, ks=(1, 2, 20),
                                    temperature=temperature)
  assert sorted(got) == [1, 2, 3]  # the ks up to n, and n
  kept, per_try = [], {k: [] for k in got}
  for t in range(tries):
    # Try t: one generator seeded t; each class in turn keeps the first n of a permutation of its rows.
    draw = np.random.default_rng(t)
    rows = np.concatenate([np.flatnonzero(labels == c)[draw.permutation(np.sum(labels == c))[:n]]
                           for c in range(classes)])
    np.testing.assert_array_equal(knn.few_shot_indices(labels, n, seed=t), rows)
    assert np.bincount(labels[rows]).tolist() == [3] * 6 + [2]
    kept.append(rows)
    for k in got:
      per_try[k].append(_numpy_knn_hits(train[rows], labels[rows], test, truth, classes, k, temperature))
  assert len({tuple(sorted(rows)) for rows in kept}) == tries
  for k, r in got.items():
    assert (r["top1"], r["top5"]) == pytest.approx(tuple(np.mean(per_try[k], axis=0))), k
    assert 0 < r["top1"] < r["top5"] < 1


@pytest.mark.slow
def test_float16_backbone_runs_on_cpu_near_float32():
  """The official evaluations' precision (fp16, "auto" on a GPU) through the evaluation path here."""
  digits = sources.make_source("digits", "heldout")
  source = [digits[i] for i in range(16)]
  features = {}
  for dtype in ("float32", "float16"):
    config = config_args.override(config_args.load_config(CONFIG), {"backbone.dtype": dtype})
    mesh, rules = loop.make_mesh(config)
    embed, params, _ = knn.cls_embedder(config, mesh, rules)
    with parallel.activation_sharding(mesh, rules):
      features[dtype], labels = extract_features(embed, params, source, 16, config.image_size, mesh,
                                                 rules)
  assert features["float16"].shape == (16, 96) and labels.tolist() == [d["label"] for d in source]
  error = np.abs(features["float16"] - features["float32"]).max() / np.abs(features["float32"]).max()
  assert 0 < error < 1e-2


@pytest.mark.parametrize("overrides, error, message", [
    ({"knn.k": ()}, ValueError, "must list positive neighbour counts"),
    ({"knn.n_per_class": (-1, 0)}, ValueError, r"knn.n_per_class=\(-1, 0\) must list -1"),
    ({"knn.n_tries": 0}, ValueError, "knn.n_tries=0 must be at least 1"),
    ({"image_size": 30}, ValueError, "image_size=30 is not a multiple of the backbone's patch size 4"),
    ({"backbone.workdir": "/nonexistent/run"}, FileNotFoundError, "has no config.json"),
])
def test_bad_settings_are_named(tmp_path, overrides, error, message):
  config = config_args.override(config_args.load_config(CONFIG), overrides)
  with pytest.raises(error, match=message):
    knn.run(config, str(tmp_path))
