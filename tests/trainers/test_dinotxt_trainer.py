"""End to end: the tiny dino.txt config learns zero-shot classification with the backbone frozen (no
gradient, no optimizer state, not checkpointed), evaluates a checkpoint again on its own, resumes
exactly after a kill, and trains the backbone too when asked (the CLIP-style step, SigLIP loss); each run
draws pictures of what it trains."""

import jax
import numpy as np
import pytest
from PIL import Image

import jobs
from dinojax import backbones, config_args, convert, loop

CONFIG = f"{jobs.REPO / 'configs/dinotxt_vitl14.py'}:tiny"
# A smaller model where only the mechanics are tested (compiles faster).
SMALL = ["--config.backbone.model.depth=2", "--config.text.depth=1", "--config.batch_size=32"]


def _command(workdir, *overrides):
  return jobs.main_command(CONFIG, workdir, "--config.data.threads=1", *overrides)


def _run(workdir, *overrides):
  return jobs.run_main(CONFIG, workdir, "--config.data.threads=1", *overrides)


def _rows(workdir, key):
  return [r for r in loop.read_metrics(workdir) if key in r]


def _pictures(workdir, step):
  return {p.name[:-len(f"_{step:07d}.png")]: np.asarray(Image.open(p))
          for p in (workdir / "pictures").glob(f"*_{step:07d}.png")}


@pytest.mark.slow
def test_tiny_run_learns_zero_shot_with_a_frozen_backbone(tmp_path):
  _run(tmp_path, "--config.total_steps=200", "--config.eval.every=200", "--config.checkpoint.every=200")
  losses = [r["loss"] for r in _rows(tmp_path, "loss")]
  assert len(losses) == 20 and np.isfinite(losses).all()
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
  trained = _rows(tmp_path, "zero_shot_top1")[-1]
  assert trained["zero_shot_top1"] > 0.2, trained  # 10 classes: chance is 0.1
  assert trained["zero_shot_top5"] > trained["zero_shot_top1"]
  assert "text_to_image_r1" in trained and "image_to_text_r10" in trained
  # The head's pictures before the first step and at the last evaluation, changed by training; none of
  # the frozen backbone, which never changes.
  first, last = _pictures(tmp_path, 0), _pictures(tmp_path, 200)
  assert set(first) == set(last) == {"pca", "cls_attention"}
  for name in first:
    assert first[name].shape == last[name].shape and not np.array_equal(first[name], last[name]), name

  # The backbone is outside the trained params, so it has no optimizer state and no checkpoint.
  step, state = jobs.final_state(tmp_path)
  assert step == 200 and set(state) == {"params", "opt", "step"}
  assert set(state["params"]) == {"vision_head", "text", "logit_scale"}
  # Adam's count plus two moments per trained param, none for the backbone.
  assert len(jax.tree.leaves(state["opt"])) == 2 * len(jax.tree.leaves(state["params"])) + 1
  assert not any("backbone" in jax.tree_util.keystr(path)
                 for path, _ in jax.tree_util.tree_flatten_with_path(state["opt"])[0])
  assert (tmp_path / "tokenizer.model").exists()
  # The trained towers, exported in the released files' layout.
  exports = {"vision_head": convert.dinotxt_vision_head_to_state_dict(state["params"]["vision_head"]),
             "text_encoder": convert.dinotxt_text_encoder_to_state_dict(state["params"]["text"])}
  for name, expected in exports.items():
    written = convert.load_state_dict(tmp_path / f"{name}.safetensors")
    assert written.keys() == expected.keys()
    for key, value in expected.items():
      np.testing.assert_array_equal(written[key], value, err_msg=key)

  # Evaluating the checkpoint alone rebuilds the same frozen backbone and tokenizer: same numbers.
  _run(tmp_path, "--config.eval_only=True")
  again = _rows(tmp_path, "zero_shot_top1")[-1]
  assert again["step"] == 200
  for key, value in trained.items():
    assert again[key] == value, key


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(tmp_path):
  overrides = [*SMALL, "--config.total_steps=8", "--config.eval.every=0", "--config.checkpoint.every=3",
               "--config.log_every=1"]
  _run(tmp_path / "straight", *overrides)
  jobs.kill_after_checkpoint(_command(tmp_path / "killed", *overrides),
                             tmp_path / "killed" / "checkpoints" / "3")
  _run(tmp_path / "killed", *overrides)  # resumes from whatever checkpoint survived

  (step_a, a), (step_b, b) = jobs.final_state(tmp_path / "straight"), jobs.final_state(tmp_path / "killed")
  assert step_a == step_b == 8
  jobs.assert_same_state(a, b)
  assert jobs.losses(tmp_path / "straight")[8] == jobs.losses(tmp_path / "killed")[8]


def test_backbone_takes_remat_and_scan_blocks_from_the_config():
  config = config_args.load_config(jobs.REPO / "configs/dinotxt_vitl14.py")
  assert not backbones.build_backbone(config).scan_blocks
  config.backbone.update(remat=True, scan_blocks=True)
  backbone = backbones.build_backbone(config)
  assert backbone.remat and backbone.scan_blocks and backbone.depth == 24


@pytest.mark.slow
def test_unfrozen_backbone_trains_with_the_sigmoid_loss(tmp_path):
  # Scanned, rematerialised blocks: the layout a trained ViT-L/g backbone compiles fastest in.
  # Pictures alone evaluated (empty sources skip zero-shot and retrieval), at steps 0 and 3.
  _run(tmp_path, *SMALL, "--config.total_steps=3", "--config.eval.every=3",
       "--config.checkpoint.every=3", "--config.log_every=1", "--config.backbone.freeze=False", "--config.loss.kind=sigmoid",
       "--config.backbone.scan_blocks=True", "--config.backbone.remat=True",
       "--config.eval.zero_shot.source=", "--config.eval.retrieval.source=")
  rows = _rows(tmp_path, "loss")
  assert len(rows) == 3 and all(np.isfinite(r["loss"]) and "logit_bias" in r for r in rows)
  # A trained backbone is drawn too, beside the head.
  assert set(_pictures(tmp_path, 3)) == {"pca", "cls_attention", "backbone_pca",
                                         "backbone_cls_attention"}
  _, state = jobs.final_state(tmp_path)
  assert set(state["params"]) == {"vision_head", "text", "logit_scale", "logit_bias", "backbone"}
