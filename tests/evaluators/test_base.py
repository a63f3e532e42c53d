"""The evaluator protocol: evaluations built once from `config.evals` entries (their settings from
`config.eval`), run on params by the loop's writer, on their schedule; bad entries named."""

import jax
import numpy as np
import pytest
from PIL import Image

import jobs
from dinojax import backbones, config_args, config_check, loop, parallel
from dinojax.data import sources
from dinojax.evaluators import base, knn

SSL_TINY = f"{jobs.REPO / 'configs/dinov2_vits14.py'}:tiny"


def _config(**overrides):
  # The held-out digits on both sides keep the k-NN's embedding cheap.
  return config_args.override(config_args.load_config(SSL_TINY), {
      "model.depth": 1, "eval.train_split": "heldout", **overrides})


def test_evaluations_are_built_from_the_config_and_run_on_params(tmp_path):
  config = _config()
  mesh, rules = loop.make_mesh(config)
  backbone = backbones.build_vit(config.model)
  size = config.crops.global_size
  init = lambda rng: backbone.init(rng, np.zeros((1, size, size, 3), np.float32))["params"]
  params, _ = parallel.init_sharded(init, mesh, rules, jax.random.key(0))
  evaluations = base.from_config(config, backbone=backbone, image_size=size, mesh=mesh, rules=rules)
  assert [(e.name, e.every, e.first) for e in evaluations] == [("knn", 100, False), ("pictures", 100, True)]

  with parallel.activation_sharding(mesh, rules):
    written = loop.evaluate(evaluations, params, 7, loop.MetricWriter(str(tmp_path)))
    (train, train_labels), (heldout, labels) = evaluations[0].evaluator.features(params)
  digits = sources.make_source("digits", "heldout")
  assert labels.tolist() == train_labels.tolist() == [digits[i]["label"] for i in range(len(digits))]
  want = knn.knn_accuracies(train, train_labels, heldout, labels, 10, (20,), 0.07)[20]["top1"]
  assert written == {"knn_top1": pytest.approx(want)} and 0 < want <= 1
  assert loop.read_metrics(tmp_path) == [{"step": 7, "knn_top1": pytest.approx(want)}]
  for name in ("pca", "cls_attention"):  # four rows of at least 128 px
    picture = np.asarray(Image.open(tmp_path / f"pictures/{name}_0000007.png"))
    assert picture.dtype == np.uint8 and picture.shape[0] == 4 * 128 and picture.shape[2] == 3


def test_the_schedule_every_steps_at_the_end_and_first_where_asked():
  due = lambda e: [s for s in range(11) if e.due(s, 10)]
  assert due(base.Evaluation("a", dict, every=4)) == [4, 8, 10]
  assert due(base.Evaluation("b", dict, every=4, first=True)) == [0, 4, 8, 10]
  assert due(base.Evaluation("c", dict, every=0, first=True)) == []


def test_a_bad_entry_is_named():
  config = _config()
  config.evals.knn.type = "knn_eval"
  with pytest.raises(ValueError, match=r"evals.knn.type='knn_eval': no such evaluation; choose one of"):
    base.from_config(config)
  assert config_check.problems(config, num_devices=8) == [
      "--config.evals.knn.type='knn_eval': must be one of ['knn', 'linear_segmentation', 'log_regression', "
      "'pictures', 'retrieval', 'talk2dino_segmentation', 'zero_shot']."]
  config = _config()
  config.evals.pictures.unlock()
  config.evals.pictures.knn_k = 5
  with pytest.raises(ValueError, match=r"evals.pictures: a 'pictures' evaluation has no setting \['knn_k'\]"):
    base.from_config(config, backbone=None, image_size=32, mesh=None, rules=())


def test_an_entry_overrides_the_shared_settings_and_every_0_turns_it_off():
  config = _config(**{"evals.knn.every": 0, "evals.knn.knn_k": 5,
                      "evals.logreg": {"type": "log_regression", "every": 50, "c_powers": (-1, 1, 3)}})
  backbone = backbones.build_vit(config.model)
  built = {e.name: e for e in base.from_config(config, backbone=backbone, image_size=32, mesh=None,
                                               rules=())}
  knn_eval, logreg = built["knn"], built["logreg"]
  assert (knn_eval.every, knn_eval.evaluator.knn_k, knn_eval.evaluator.knn_temperature) == (0, 5, 0.07)
  assert not any(knn_eval.due(step, 100) for step in range(101))
  assert logreg.every == 50 and logreg.evaluator.cs.tolist() == pytest.approx([0.1, 1, 10])
  assert logreg.evaluator.splits == ("heldout", "", "heldout")  # eval's, as the k-NN's
  config = _config(**{"evals.seg": {"type": "linear_segmentation"}})
  with pytest.raises(ValueError, match=r"evals.seg: a 'linear_segmentation' evaluation needs \['split', "
                     r"'benchmark', 'segmenter'\], which this job neither provides nor its config gives"):
    base.from_config(config, backbone=backbone, image_size=32, mesh=None, rules=())
