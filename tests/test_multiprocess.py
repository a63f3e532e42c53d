"""Two processes × 4 CPU devices joined over gloo train exactly like one process with 8 devices,
through a kill -9 of both processes and a resume."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config", f"{REPO / 'configs/dinov2_vits14.py'}:tiny", "--config.model.depth=2",
        "--config.batch_size=16", "--config.ibot.mask_group=8", "--config.total_steps=6",
        "--config.eval.every=6", "--config.eval.batch_size=200", "--config.checkpoint.every=3",
        "--config.log_every=1", "--config.data.threads=1"]


def _env(devices):
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_PLATFORMS": "cpu"}


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_pair(workdir, *extra):
  port = _free_port()
  return [subprocess.Popen(
      [sys.executable, "-m", "dinojax.main", *ARGS, *extra, "--workdir", str(workdir),
       f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=_env(4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


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


def test_two_processes_with_kill_and_resume_equal_one_process(tmp_path):
  single = subprocess.run([sys.executable, "-m", "dinojax.main", *ARGS, "--workdir", str(tmp_path / "one")],
                          cwd=REPO, env=_env(8), capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]

  pair = _start_pair(tmp_path / "two")
  deadline = time.time() + 600
  while not (tmp_path / "two/checkpoints/3").exists() and time.time() < deadline:
    assert all(p.poll() is None for p in pair), [p.stderr.read()[-3000:] for p in pair]
    time.sleep(0.05)
  for p in pair:
    p.send_signal(signal.SIGKILL)
    p.wait()

  pair = _start_pair(tmp_path / "two")
  for p in pair:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]

  (step_one, one), (step_two, two) = _final_params(tmp_path / "one"), _final_params(tmp_path / "two")
  assert step_one == step_two == 6
  for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  knn = [l for l in (tmp_path / "two/metrics.jsonl").read_text().splitlines() if "knn_top1" in l]
  assert len(knn) == 1  # only process 0 writes metrics


def test_hybrid_mesh_across_processes_equals_one_process(tmp_path):
  # Each process stands for a slice: fsdp within it, data across the two over the "DCN".
  args = ["--config.total_steps=2", "--config.checkpoint.every=2", "--config.eval.every=0"]
  single = subprocess.run([sys.executable, "-m", "dinojax.main", *ARGS, *args, "--workdir",
                           str(tmp_path / "one")], cwd=REPO, env=_env(8), capture_output=True, text=True,
                          timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  pair = _start_pair(tmp_path / "two", *args, "--config.mesh.data=1", "--config.mesh.fsdp=-1",
                     "--config.mesh_dcn.data=2")
  for p in pair:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  for a, b in zip(_final_params(tmp_path / "one")[1], _final_params(tmp_path / "two")[1]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
