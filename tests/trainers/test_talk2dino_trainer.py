"""End to end: the tiny Talk2DINO config learns ψ with the towers frozen, resumes exactly after a kill,
and gives the same losses on one device and on 8 (the InfoNCE spans the global batch)."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from dinojax import convert
from dinojax.trainers import loop

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = f"{REPO / 'configs/talk2dino_vitb14reg.py'}:tiny"


def _command(workdir, *overrides):
  return [sys.executable, "-m", "dinojax.main", "--config", CONFIG, "--workdir", str(workdir),
          "--config.log_every=1", "--config.data.threads=1", *overrides]


def _env(devices):
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_PLATFORMS": "cpu"}


def _run(workdir, *overrides, devices=8):
  result = subprocess.run(_command(workdir, *overrides), capture_output=True, text=True,
                          env=_env(devices), cwd=REPO, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]


def _final_state(workdir):
  mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = mgr.latest_step()
  return step, mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


def _rows(workdir):
  return {r["step"]: r for r in loop.read_metrics(workdir) if "loss" in r}


def test_tiny_run_learns_resumes_exactly_and_matches_one_device(tmp_path, kill_after_checkpoint):
  overrides = ["--config.total_steps=120", "--config.checkpoint.every=40"]
  _run(tmp_path / "straight", *overrides)
  rows = [r for _, r in sorted(_rows(tmp_path / "straight").items())]
  assert len(rows) == 120
  losses = [r["loss"] for r in rows]
  assert np.mean(losses[-20:]) < 0.93 * np.mean(losses[:20]), (losses[:5], losses[-5:])
  assert np.mean([r["text_to_image_top1"] for r in rows[-20:]]) > 2 / 32  # above chance
  assert len({r["frozen_norm"] for r in rows}) == 1  # the towers never moved
  assert rows[-1]["param_norm"] != rows[0]["param_norm"]

  # ψ is exported in the official layout and loads back as the trained params.
  model, exported = convert.talk2dino_from_checkpoint(tmp_path / "straight" / "projection.safetensors")
  step, state = _final_state(tmp_path / "straight")
  assert (model.dino_dim, model.hidden_layers, model.act) == (48, 1, "tanh")
  assert step == 120 and set(state) == {"params", "opt", "step"}
  for a, b in zip(jax.tree.leaves(exported["params"]), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(a, b)

  # Killed after its first checkpoint, then rerun: the same final state and losses.
  kill_after_checkpoint(_command(tmp_path / "killed", *overrides), tmp_path / "killed" / "checkpoints" / "40",
                        _env(8))
  _run(tmp_path / "killed", *overrides)
  _, resumed = _final_state(tmp_path / "killed")
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  killed = _rows(tmp_path / "killed")
  assert killed[120]["loss"] == rows[-1]["loss"]
  assert killed[120]["frozen_norm"] == rows[-1]["frozen_norm"]  # the reloaded towers are the same

  # One device, same data and init: the losses of the 8-device run (the InfoNCE spans the global batch).
  _run(tmp_path / "one", "--config.total_steps=3", "--config.checkpoint.every=3", devices=1)
  one = _rows(tmp_path / "one")
  np.testing.assert_allclose([one[s]["loss"] for s in (1, 2, 3)], losses[:3], rtol=2e-5)
