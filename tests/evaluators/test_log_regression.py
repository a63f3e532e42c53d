"""Logistic regression against scikit-learn (the same objective as the official cuML solver), its
accuracies by hand, the sweep of C against the official values, and the `log_regression_eval` job:
its outputs, its resume from a half-done sweep and its errors."""

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import jobs
from dinojax import config_args, convert, parallel
from dinojax.evaluators import log_regression

CONFIG = f"{jobs.REPO / 'configs/log_regression_eval.py'}:tiny"


def _blobs(classes: int, rows: int = 240, dims: int = 12, seed: int = 0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, rows)
  features = rng.normal(size=(rows, dims)) + 1.5 * rng.normal(size=(classes, dims))[labels]
  return features, labels


@pytest.mark.slow
@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize("c", [1e-3, 1.0, 100.0])
def test_fit_matches_scikit_learn(classes, c):
  features, labels = _blobs(classes)
  head, _ = log_regression.fit_logistic_regression(features, labels, classes, c, max_iter=1000)
  reference = LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(features, labels)
  scale = np.abs(reference.coef_).max()
  np.testing.assert_allclose(head["w"].T, reference.coef_, atol=2e-5 * scale)
  np.testing.assert_allclose(head["b"], reference.intercept_, atol=2e-5 * max(scale, 1))
  probabilities = reference.predict_proba(features)
  np.testing.assert_array_equal(log_regression.class_scores(head, features).argmax(1),
                                probabilities.argmax(1))


@pytest.mark.slow
def test_fit_sharded_over_eight_devices_equals_one_device():
  features, labels = _blobs(4, rows=203)  # 203 rows: padded to 208 on 8 devices
  mesh = parallel.make_mesh({"data": 8, "fsdp": 1, "model": 1})
  one, _ = log_regression.fit_logistic_regression(features, labels, 4, 1.0)
  eight, _ = log_regression.fit_logistic_regression(features, labels, 4, 1.0, mesh=mesh)
  for key in ("w", "b"):
    np.testing.assert_allclose(eight[key], one[key], atol=1e-7)


def test_fit_in_float32_is_close_to_float64():
  features, labels = _blobs(3)
  f64, _ = log_regression.fit_logistic_regression(features, labels, 3, 1.0)
  f32, _ = log_regression.fit_logistic_regression(features, labels, 3, 1.0, dtype="float32")
  assert f32["w"].dtype == np.float32
  np.testing.assert_allclose(f32["w"], f64["w"], atol=1e-3 * np.abs(f64["w"]).max())


def test_c_values_are_the_official_sweep():
  official = (10 ** torch.linspace(-6, 5, 45)).numpy()
  np.testing.assert_allclose(log_regression.c_values((-6, 5, 45)), official, rtol=1e-6)


def test_accuracies_by_hand():
  scores = np.array([[3., 2, 1, 0],   # label 0: right
                     [0., 3, 2, 1],   # label 0: wrong (1), 0 is 4th
                     [1., 0, 3, 2],   # label 2: right
                     [1., 0, 3, 2]])  # label 1: wrong (2), 1 is 4th
  labels = np.array([0, 0, 2, 1])
  assert log_regression.accuracies(scores, labels) == {"top-1": 0.5, "top-5": 1.0}
  # Class recalls: 0 → 1/2, 1 → 0, 2 → 1; class 3 neither occurs nor is predicted (not counted).
  per_class = log_regression.accuracies(scores, labels, "mean_per_class_accuracy")
  assert per_class["top-1"] == pytest.approx(0.5)
  # A predicted but absent class counts as 0 (torchmetrics' macro average): the last image now goes
  # to a class 4 that none has.
  scores5 = np.concatenate([scores, [[0.], [0], [0], [9]]], axis=1)
  assert log_regression.accuracies(scores5, labels, "mean_per_class_accuracy")["top-1"] == pytest.approx(
      (0.5 + 0 + 1 + 0) / 4)
  with pytest.raises(ValueError, match="Unknown metric 'top1'"):
    log_regression.accuracies(scores, labels, "top1")


# A short sweep: 5 values of C, 200 iterations.
SHORT = {"log_regression.c_powers": (-2, 2, 5), "log_regression.max_iter": 200}


def _config(**overrides):
  return config_args.override(config_args.load_config(CONFIG), {**SHORT, **overrides})


@pytest.mark.slow
def test_job_sweeps_c_refits_the_best_and_resumes_a_half_done_sweep(tmp_path, monkeypatch):
  metrics = log_regression.run(_config(), str(tmp_path))
  results = json.loads((tmp_path / "results_eval_log_regression.json").read_text())
  sweep = results["sweep"]
  assert list(sweep) == ["0.01", "0.1", "1", "10", "100"]
  best = max(sweep, key=lambda k: sweep[k]["top-1"])
  assert results["best_C"] == pytest.approx(float(best))
  # C is chosen on a tenth of the 1437 training digits, the final fit uses them all.
  assert results["train_images"] == 1437 and results["finetune_images"] == 143
  assert results["test_images"] == 360 and metrics["log_regression_top1"] == results["top-1"] > 0.2
  head = convert.load_state_dict(str(tmp_path / "best_log_regression_head.safetensors"))
  assert head["weight"].shape == (10, 96) and list(head["classes"]) == list(range(10))

  # As a run stopped after two values of C: the rest of the sweep and the final fit run again, on
  # the kept features (extraction would fail), and give the same result.
  state = json.loads((tmp_path / "log_regression_sweep.json").read_text())
  state["accuracy"] = dict(list(state["accuracy"].items())[:2])
  (tmp_path / "log_regression_sweep.json").write_text(json.dumps(state))
  (tmp_path / "results_eval_log_regression.json").unlink()
  fits = []
  fit = log_regression.fit_logistic_regression
  monkeypatch.setattr(log_regression, "fit_logistic_regression", lambda *a, **k: fits.append(a[3]) or fit(*a, **k))
  monkeypatch.setattr(log_regression, "extract_features", lambda *a, **k: pytest.fail("features extracted again"))
  log_regression.run(_config(), str(tmp_path))
  assert fits[:3] == pytest.approx([1, 10, 100]) and len(fits) == 4
  assert json.loads((tmp_path / "results_eval_log_regression.json").read_text()) == results

  # Features kept for one transform or precision are not reused for another.
  with pytest.raises(ValueError, match="use another workdir"):
    log_regression.run(_config(**{"data.resize_size": 36}), str(tmp_path))
  with pytest.raises(ValueError, match="'dtype': 'float16'.*use another workdir"):
    log_regression.run(_config(**{"backbone.dtype": "float16"}), str(tmp_path))


@pytest.mark.parametrize("overrides, message", [
    ({"log_regression.metric": "accuracy"}, "log_regression.metric='accuracy'"),
    ({"log_regression.dtype": "bfloat16"}, "choose float32 or float64"),
    ({"log_regression.c_powers": (-1, 1, 0)}, "gives no C to try"),
    ({"image_size": 30}, "image_size=30 is not a multiple of the backbone's patch size 4"),
])
def test_bad_settings_are_named(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    log_regression.run(_config(**overrides), str(tmp_path))


def test_non_positive_c_is_named():
  features, labels = _blobs(2)
  with pytest.raises(ValueError, match="C=0 must be positive"):
    log_regression.fit_logistic_regression(features, labels, 2, 0.0)


def test_the_evaluator_is_the_sweep_and_refit_on_the_backbone_features(monkeypatch):
  # Features of a backbone stand in as blobs; C chosen on the held-out split (one fit shape: one compile).
  splits = {"train": _blobs(3, rows=200, seed=1), "heldout": _blobs(3, rows=60, seed=2)}
  monkeypatch.setattr(log_regression, "extract_features", lambda embed, params, source, *a, **k: splits[
      "train" if len(source) == 1437 else "heldout"])
  evaluator = log_regression.LogRegression(
      source="digits", train_split="train", heldout_split="heldout", batch_size=8, backbone=None,
      image_size=32, mesh=None, rules=(), c_powers=(-2, 2, 3), max_iter=100, finetune_on_val=True)
  report = evaluator.evaluate(params=None)
  assert report["metrics"] == evaluator(None)  # the protocol's call: the same fits, no files
  train, test = splits["train"], splits["heldout"]
  score = lambda c: log_regression.accuracies(log_regression.class_scores(
      log_regression.fit_logistic_regression(*train, 3, c, max_iter=100)[0], test[0]), test[1])
  assert report["sweep"] == {key: score(float(key)) for key in ("0.01", "1", "100")}
  best = max(("0.01", "1", "100"), key=lambda k: report["sweep"][k]["top-1"])
  assert report["accuracy"] == report["sweep"][best]  # refitted on the same training images
  assert report["metrics"] == {"log_regression_top1": report["accuracy"]["top-1"],
                               "log_regression_top5": report["accuracy"]["top-5"],
                               "log_regression_best_c": pytest.approx(float(best))}
  assert (report["train_images"], report["finetune_images"], report["test_images"]) == (200, 60, 60)
