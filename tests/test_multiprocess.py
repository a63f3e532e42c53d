"""Two processes × 4 CPU devices joined over gloo, on a hybrid (ICI × DCN) mesh, train like one
process with 8 devices, through a kill -9 of both processes and a resume; and evaluate like it
(the logistic-regression job: features gathered from both, the solver's rows split over them)."""

import json
import os
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jobs

pytestmark = pytest.mark.slow  # training jobs in subprocesses

CONFIG = f"{jobs.REPO / 'configs/dinov2_vits14.py'}:tiny"
OVERRIDES = ["--config.model.depth=2", "--config.batch_size=16", "--config.ibot.mask_group=8",
             "--config.total_steps=6", "--config.eval.every=6", "--config.eval.batch_size=200",
             "--config.checkpoint.every=3", "--config.log_every=1", "--config.data.threads=1"]


def _start_pair(workdir, *extra, config=CONFIG, overrides=OVERRIDES):
  """The two processes of a run (`jobs.start_processes`)."""
  coordinator = f"--coordinator=127.0.0.1:{jobs.free_port()}"
  commands = [jobs.main_command(config, workdir, *overrides, *extra, coordinator, "--num_processes=2",
                                f"--process_id={i}") for i in range(2)]
  return jobs.start_processes(commands, workdir, devices=4)


def _final_params(workdir):
  """The latest checkpoint's params, restored onto this (test) process's first device."""
  step = ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).latest_step()
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata)
  restored = checkpointer.restore(path, target)
  return step, [np.asarray(x) for x in jax.tree.leaves(restored["params"])]


def test_two_processes_on_a_hybrid_mesh_with_kill_and_resume_equal_one_process(tmp_path):
  jobs.run_main(CONFIG, tmp_path / "one", *OVERRIDES)

  # Each process stands for a slice: fsdp within it, data across the two over the "DCN".
  hybrid = ["--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.mesh_dcn.data=2"]
  pair = _start_pair(tmp_path / "two", *hybrid)
  deadline = time.time() + 600
  while not (tmp_path / "two/checkpoints/3").exists() and time.time() < deadline:
    assert all(p.poll() is None for p in pair), jobs.process_errors(tmp_path / "two")
    time.sleep(0.05)
  for p in pair:
    p.send_signal(signal.SIGKILL)
    p.wait()

  jobs.wait_processes(_start_pair(tmp_path / "two", *hybrid), tmp_path / "two")

  (step_one, one), (step_two, two) = _final_params(tmp_path / "one"), _final_params(tmp_path / "two")
  assert step_one == step_two == 6
  # Gloo's cross-process sum adds in another order than one process's all-reduce, and Adam divides
  # each gradient by its own scale, so an element whose gradient is at rounding level may step the
  # other way. A wrong shard or collective would move nearly every element and every loss.
  losses = [jobs.losses(tmp_path / run) for run in ("one", "two")]
  np.testing.assert_allclose([losses[1][s] for s in range(1, 7)], [losses[0][s] for s in range(1, 7)],
                             rtol=2e-5)
  one, two = np.concatenate([a.ravel() for a in one]), np.concatenate([b.ravel() for b in two])
  assert np.mean(~np.isclose(two, one, rtol=1e-5, atol=1e-6)) < 1e-3
  knn = [l for l in (tmp_path / "two/metrics.jsonl").read_text().splitlines() if "knn_top1" in l]
  assert len(knn) == 1  # only process 0 writes metrics


LOG_REGRESSION = f"{jobs.REPO / 'configs/log_regression_eval.py'}:tiny"
SHORT_SWEEP = ["--config.log_regression.c_powers=(-2, 2, 3)", "--config.log_regression.max_iter=100"]


def test_log_regression_on_two_processes_equals_one_process(tmp_path):
  jobs.run_main(LOG_REGRESSION, tmp_path / "one", *SHORT_SWEEP)
  pair = _start_pair(tmp_path / "two", config=LOG_REGRESSION, overrides=SHORT_SWEEP)
  jobs.wait_processes(pair, tmp_path / "two")
  one, two = (json.loads((tmp_path / run / "results_eval_log_regression.json").read_text())
              for run in ("one", "two"))
  assert two["train_images"] == one["train_images"] and two["test_images"] == one["test_images"] == 360
  # Both hosts' images come back in the source's order (the tenth that chooses C depends on it).
  for split in ("train", "heldout"):
    a, b = (np.load(tmp_path / run / f"features_{split}.npz") for run in ("one", "two"))
    np.testing.assert_array_equal(b["labels"], a["labels"])
    np.testing.assert_array_equal(b["features"], a["features"])
  assert two["best_C"] == one["best_C"]
  # Float64 sums in another order (gloo's) may move a score by an image at most.
  for c in one["sweep"]:
    assert two["sweep"][c]["top-1"] == pytest.approx(one["sweep"][c]["top-1"], abs=1.5 / 143)
  assert two["top-1"] == pytest.approx(one["top-1"], abs=1.5 / 360)
