"""Linear evaluation: the probes' inputs, the classifier grid's training against PyTorch's SGD with
per-group learning rates and cosine annealing (the official optimizer), the accuracy counts, a
backbone read from a dinojax run, and the job end to end (trains, resumes exactly, refuses another
backbone on resume)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jobs
from dinojax import backbones, checkpoint, config_args, convert, loop, parallel
from dinojax.evaluators import linear
from dinojax.models.vit import unstack_blocks

CONFIG = f"{jobs.REPO / 'configs/linear_eval.py'}:tiny"
LRS = config_args.load_config(CONFIG).linear.learning_rates


def test_probe_inputs_are_the_official_linear_inputs():
  rng = np.random.default_rng(0)
  outputs = [(rng.normal(size=(2, 6, 4)), rng.normal(size=(2, 4))) for _ in range(4)]
  for blocks, avgpool in [(1, False), (1, True), (4, False), (4, True)]:
    expected = [cls for _, cls in outputs[-blocks:]] + ([outputs[-1][0].mean(axis=1)] if avgpool else [])
    got = linear.Probe(blocks, avgpool).features([tuple(map(jnp.asarray, o)) for o in outputs])
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.concatenate(expected, axis=-1), rtol=1e-6)


def test_names_and_scaled_learning_rates_are_the_official_ones():
  assert linear.classifier_name(linear.Probe(4, True), 0.0025) == "classifier_4_blocks_avgpool_True_lr_0_00250"
  assert linear.classifier_name(linear.Probe(1, False), 4e-5) == "classifier_1_blocks_avgpool_False_lr_0_00004"
  small = linear.scaled_learning_rates(LRS, 64)  # the official grid at batch 64: 2.5e-6, 5e-6, ...
  names = {linear.classifier_name(linear.Probe(1, False), lr) for lr in small}
  assert len(names) == len(small) and "classifier_1_blocks_avgpool_False_lr_2_50e-06" in names
  np.testing.assert_allclose(linear.scaled_learning_rates([1e-3, 0.1], 1024), [4e-3, 0.4])
  assert [p.name for p in linear.make_probes((1, 4), (False, True))] == [
      "1_blocks_avgpool_False", "1_blocks_avgpool_True", "4_blocks_avgpool_False", "4_blocks_avgpool_True"]


def test_grid_training_matches_torch_sgd_with_a_learning_rate_per_classifier():
  steps, batch, classes, lrs = 6, 16, 5, np.array([0.01, 0.1, 0.5], np.float32)
  dims = {"a": 7, "b": 3}
  rng = np.random.default_rng(1)
  batches = [({k: rng.normal(size=(batch, d)).astype(np.float32) for k, d in dims.items()},
              rng.integers(0, classes, batch)) for _ in range(steps)]
  params = linear.init_classifiers(jax.random.key(0), dims, len(lrs), classes)

  tx = linear.make_optimizer(steps, 0.9)
  update = jax.jit(lambda p, o, f, y: linear.sgd_update(tx, jnp.asarray(lrs), p, o, f, y))
  ours, opt, losses = params, tx.init(params), []
  for feats, labels in batches:
    ours, opt, loss = update(ours, opt, feats, labels)
    losses.append(float(loss))

  # The official setup: one nn.Linear per (probe, lr), an SGD group each, CosineAnnealingLR to 0.
  layers = {}
  for name in dims:
    for i in range(len(lrs)):
      layer = torch.nn.Linear(dims[name], classes)
      with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.array(params[name]["kernel"][i]).T))
        layer.bias.copy_(torch.from_numpy(np.array(params[name]["bias"][i])))
      layers[name, i] = layer
  opt_t = torch.optim.SGD([{"params": m.parameters(), "lr": float(lrs[i])} for (_, i), m in layers.items()],
                          momentum=0.9, weight_decay=0)
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_t, steps, eta_min=0)
  for (feats, labels), loss_ours in zip(batches, losses):
    loss = sum(torch.nn.functional.cross_entropy(m(torch.from_numpy(feats[name])), torch.from_numpy(labels))
               for (name, _), m in layers.items())
    opt_t.zero_grad()
    loss.backward()
    opt_t.step()
    sched.step()
    assert loss_ours == pytest.approx(loss.item(), rel=1e-5)
  for (name, i), m in layers.items():
    np.testing.assert_allclose(np.asarray(ours[name]["kernel"][i]), m.weight.detach().numpy().T, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours[name]["bias"][i]), m.bias.detach().numpy(), atol=1e-6)


def test_counts_and_the_best_classifier():
  # One probe, two classifiers over 3 classes; the second row of the batch is padding.
  kernel = jnp.stack([jnp.eye(3), jnp.eye(3)[:, ::-1]])
  classifiers = {"p": {"kernel": kernel, "bias": jnp.zeros((2, 3))}}
  features = {"p": jnp.array([[0.0, 0.2, 1.0], [5.0, 0.0, 0.0], [0.3, 1.0, 0.0]])}
  labels, valid = jnp.array([2, 1, 0]), jnp.array([True, False, True])
  top1, top2 = linear.correct_counts(classifiers, features, labels, valid, top_k=2)["p"]
  # Classifier 0 predicts [2, 0, 1] (top-2 [2,1], ., [1,0]); classifier 1 reverses the classes:
  # logits [1, .2, 0] -> [0, 1]; [0, 1, .3] -> [1, 2].
  assert top1.tolist() == [1, 0] and top2.tolist() == [2, 0]
  assert linear.best_classifier({"x": {"top1": 0.5}, "y": {"top1": 0.7}, "z": {"top1": 0.7}}) == ("y", 0.7)


def _save_run(workdir, job, key, params, model: dict, step=3):
  """A fake dinojax run: its config.json and a checkpoint whose `key` entry holds the backbone."""
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"job": job, "model": model}))
  noise = jax.tree.map(lambda x: x + 1.0, params)  # the other entries must not be the one read
  state = {"params": {"backbone": noise}, key: {"backbone": params, "dino_head": {"w": jnp.ones(3)}},
           "step": jnp.int32(step)}
  mgr = checkpoint.manager(workdir / "checkpoints")
  checkpoint.save(mgr, step, state, {"step": step}, force=True)
  mgr.wait_until_finished()


def _config(**overrides):
  return config_args.override(config_args.load_config(CONFIG), overrides)


@pytest.mark.parametrize("job, key", [("ssl", "teacher"), ("distill", "ema")])
def test_backbone_is_read_from_a_dinojax_run(tmp_path, job, key):
  config = _config()
  mesh, rules = loop.make_mesh(config)
  model = {**config.backbone.model.to_dict(), "depth": 2, "drop_path_rate": 0.1, "drop_path_uniform": True,
           "scan_blocks": True}
  run_backbone = backbones.build_vit(model)
  abstract = jax.eval_shape(lambda k: run_backbone.init(k, jnp.zeros((1, 32, 32, 3)))["params"],
                            jax.random.key(0))
  params = parallel.to_device(jax.tree.map(lambda x: np.random.default_rng(0).normal(size=x.shape).astype(
      np.float32), nn.unbox(abstract)), parallel.logical_to_shardings(abstract, mesh, rules))
  _save_run(tmp_path / "run", job, key, params, model)

  # The run's architecture, not the hub name's; the evaluation's own compile options (the run's
  # stacked blocks restore into the evaluation's unrolled ones).
  config.backbone.update(name="vits14", workdir=str(tmp_path / "run"))
  backbone = backbones.build_backbone(config)
  assert (backbone.depth, backbone.embed_dim, backbone.scan_blocks) == (2, 96, False)
  restored, source = backbones.init_backbone(config, backbone, mesh, rules)
  assert source.endswith("run@3")
  jobs.assert_same_state(unstack_blocks(params), restored)
  config.backbone.scan_blocks = True
  restored, _ = backbones.init_backbone(config, backbones.build_backbone(config), mesh, rules)
  jobs.assert_same_state(params, restored)

  config.backbone.checkpoint = "x.pth"
  with pytest.raises(ValueError, match="one of backbone.workdir and backbone.checkpoint"):
    backbones.init_backbone(config, backbone, mesh, rules)


def test_a_workdir_that_is_not_a_backbone_run_is_named(tmp_path):
  config = _config(**{"backbone.workdir": str(tmp_path)})
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    backbones.build_backbone(config)
  (tmp_path / "config.json").write_text(json.dumps({"job": "talk2dino", "model": {}}))
  with pytest.raises(ValueError, match="is a 'talk2dino' run"):
    backbones.build_backbone(config)
  # An SSL run that has not written a checkpoint yet.
  (tmp_path / "config.json").write_text(json.dumps({"job": "ssl", "model": config.backbone.model.to_dict()}))
  mesh, rules = loop.make_mesh(config)
  with pytest.raises(FileNotFoundError, match="has no checkpoints/ yet"):
    backbones.init_backbone(config, backbones.build_backbone(config), mesh, rules)
  # ... or whose checkpoints/ holds none yet.
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match="No checkpoint in .*checkpoints"):
    backbones.init_backbone(config, backbones.build_backbone(config), mesh, rules)


@pytest.mark.parametrize("overrides, message", [
    ({"linear.n_last_blocks": (8,)}, "asks for 8 blocks; the backbone has 4"),
    ({"image_size": 30}, "image_size=30 is not a multiple of the backbone's patch size 4"),
    ({"linear.learning_rates": ()}, "must each list at least one value"),
    ({"linear.n_last_blocks": (0, 4)}, r"n_last_blocks=\(0, 4\) must be block counts ≥ 1"),
])
def test_bad_settings_are_named(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    linear.run(_config(**overrides), str(tmp_path))


# ---------------------------------------------------------------------------------------------------
# The job end to end (subprocesses on 8 fake devices)
# ---------------------------------------------------------------------------------------------------
STEPS = ["--config.total_steps=60", "--config.eval.every=30", "--config.checkpoint.every=10",
         "--config.log_every=5", "--config.eval.batch_size=120", "--config.data.threads=1"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("linear")
  jobs.run_main(CONFIG, workdir, *STEPS)
  return workdir


@pytest.mark.slow
def test_tiny_run_trains_the_grid_and_reports_the_best_classifier(straight_run):
  rows = loop.read_metrics(straight_run)
  losses = [r["loss"] for r in rows if "loss" in r]
  assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
  evals = [r for r in rows if "linear_top1" in r]
  assert [r["step"] for r in evals] == [30, 60]
  results = json.loads((straight_run / "results_eval_linear.json").read_text())
  assert results["step"] == 60 and results["validation_images"] == 360
  assert len(results["classifiers"]) == 4 * 13
  best = results["best_classifier"]
  assert best["accuracy"] == max(c["top1"] for c in results["classifiers"].values()) == evals[-1]["linear_top1"]
  assert best["accuracy"] > 0.2  # 10 classes: chance is 0.1
  assert json.loads((straight_run / "config.json").read_text())["job"] == "linear_eval"
  step, state = jobs.final_state(straight_run)
  assert step == 60 and set(state) == {"params", "opt", "step"}
  # The best classifier, written as a PyTorch nn.Linear (the released heads' layout).
  probe, i = linear.classifier_grid(linear.make_probes((1, 4), (False, True)),
                                    linear.scaled_learning_rates(LRS, 64))[best["name"]]
  head = convert.classifier_head_from_state_dict(
      convert.load_state_dict(straight_run / "best_linear_head.safetensors"), (probe.blocks + probe.avgpool) * 96)
  np.testing.assert_array_equal(head["kernel"], state["params"][probe.name]["kernel"][i])
  np.testing.assert_array_equal(head["bias"], state["params"][probe.name]["bias"][i])


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(tmp_path, straight_run):
  jobs.kill_after_checkpoint(jobs.main_command(CONFIG, tmp_path, *STEPS), tmp_path / "checkpoints" / "10")
  jobs.run_main(CONFIG, tmp_path, *STEPS)
  jobs.assert_same_state(jobs.final_state(straight_run)[1], jobs.final_state(tmp_path)[1])
  assert (json.loads((tmp_path / "results_eval_linear.json").read_text())["classifiers"] ==
          json.loads((straight_run / "results_eval_linear.json").read_text())["classifiers"])


@pytest.mark.slow
def test_resuming_with_another_backbone_is_an_error(tmp_path, straight_run):
  import shutil
  shutil.copytree(straight_run, tmp_path, dirs_exist_ok=True)
  result = jobs.run_main(CONFIG, tmp_path, *STEPS, "--config.seed=1", check=False)
  assert result.returncode != 0 and "written with backbone='random:2'" in result.stderr


@pytest.mark.slow
def test_test_sets_are_scored_by_the_classifier_chosen_on_validation(tmp_path, straight_run):
  # The finished run started again with test sets: its validation split again (the same best
  # classifier and accuracy) and the training split, each scored by that classifier.
  import shutil
  shutil.copytree(straight_run, tmp_path, dirs_exist_ok=True)
  jobs.run_main(CONFIG, tmp_path, *STEPS, "--config.data.test_sets=(('digits', 'heldout'), ('digits', 'train'))")
  before = json.loads((straight_run / "results_eval_linear.json").read_text())
  after = json.loads((tmp_path / "results_eval_linear.json").read_text())
  tests, best = after["test_sets"], before["best_classifier"]
  assert tests["classifier"] == best["name"] and after["best_classifier"] == best
  assert tests["digits:heldout"]["top1"] == best["accuracy"] and tests["digits:heldout"]["images"] == 360
  assert tests["digits:train"]["images"] == 1437 and tests["digits:train"]["top1"] > 0.2
  logged = [r for r in loop.read_metrics(tmp_path) if "linear_top1/digits:train" in r]
  assert len(logged) == 1 and logged[0]["linear_top1/digits:train"] == tests["digits:train"]["top1"]
