"""End to end: the tiny Talk2DINO config learns ψ with the towers frozen, resumes exactly after a kill,
and gives the same losses on one device and on 8 (the InfoNCE spans the global batch)."""

import numpy as np
import pytest

import jobs
from dinojax import convert, loop

pytestmark = pytest.mark.slow  # training jobs in subprocesses

CONFIG = f"{jobs.REPO / 'configs/talk2dino_vitb14reg.py'}:tiny"
DEFAULTS = ["--config.log_every=1", "--config.data.threads=1"]


def _rows(workdir):
  return {r["step"]: r for r in loop.read_metrics(workdir) if "loss" in r}


def test_tiny_run_learns_resumes_exactly_and_matches_one_device(tmp_path):
  overrides = ["--config.total_steps=120", "--config.checkpoint.every=40"]
  jobs.run_main(CONFIG, tmp_path / "straight", *DEFAULTS, *overrides)
  rows = [r for _, r in sorted(_rows(tmp_path / "straight").items())]
  assert len(rows) == 120
  losses = [r["loss"] for r in rows]
  assert np.mean(losses[-20:]) < 0.93 * np.mean(losses[:20]), (losses[:5], losses[-5:])
  assert np.mean([r["text_to_image_top1"] for r in rows[-20:]]) > 2 / 32  # above chance
  assert len({r["frozen_norm"] for r in rows}) == 1  # the towers never moved
  assert rows[-1]["param_norm"] != rows[0]["param_norm"]

  # ψ is exported in the official layout and loads back as the trained params.
  model, exported = convert.talk2dino_from_checkpoint(tmp_path / "straight" / "projection.safetensors")
  step, state = jobs.final_state(tmp_path / "straight")
  assert (model.dino_dim, model.hidden_layers, model.act) == (48, 1, "tanh")
  assert step == 120 and set(state) == {"params", "opt", "step"}
  jobs.assert_same_state(exported["params"], state["params"])

  # Killed after its first checkpoint, then rerun: the same final state and losses.
  jobs.kill_after_checkpoint(jobs.main_command(CONFIG, tmp_path / "killed", *DEFAULTS, *overrides),
                             tmp_path / "killed" / "checkpoints" / "40")
  jobs.run_main(CONFIG, tmp_path / "killed", *DEFAULTS, *overrides)
  _, resumed = jobs.final_state(tmp_path / "killed")
  jobs.assert_same_state(state, resumed)
  killed = _rows(tmp_path / "killed")
  assert killed[120]["loss"] == rows[-1]["loss"]
  assert killed[120]["frozen_norm"] == rows[-1]["frozen_norm"]  # the reloaded towers are the same

  # One device, same data and init: the losses of the 8-device run (the InfoNCE spans the global batch).
  jobs.run_main(CONFIG, tmp_path / "one", *DEFAULTS, "--config.total_steps=3", "--config.checkpoint.every=3",
                devices=1)
  one = _rows(tmp_path / "one")
  np.testing.assert_allclose([one[s]["loss"] for s in (1, 2, 3)], losses[:3], rtol=2e-5)
