"""Training jobs as the end-to-end tests run them: `python -m dinojax.main` in a subprocess on fake CPU
devices, killed the hard way when a test needs a preemption, and what a run leaves in its workdir.
Subprocesses inherit this process's environment, so they share the session's compilation cache
(tests/conftest.py). Test modules import this as `jobs` (pytest puts tests/ on the path)."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from tensorboard.backend.event_processing import event_accumulator

from dinojax import config_args, loop

REPO = pathlib.Path(__file__).resolve().parents[1]


def config(spec: str):
  """A config of configs/ as `--config` reads it, e.g. `config("dinov2_vits14.py:tiny")`."""
  return config_args.load_config(f"{REPO / 'configs'}/{spec}")


def hf_dinov2(depth: int, image_size: int):
  """A random `transformers` DINOv2 (width 32, 2 heads, /14, LayerScale 0.5, weights moved off their
  init), in eval mode: the independent backbone the head parity tests compose on."""
  import torch  # only the parity tests need torch and transformers
  from transformers import Dinov2Config, Dinov2Model
  torch.manual_seed(0)
  model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=depth, num_attention_heads=2,
                                   image_size=image_size, patch_size=14, layerscale_value=0.5))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.02)
  return model.eval()


def cpu_env(devices: int = 8) -> dict:
  """This process's environment, with `devices` fake CPU devices."""
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_PLATFORMS": "cpu"}


def free_port() -> int:
  """A free TCP port on this machine, for a multi-process run's coordinator."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_processes(commands: list[list[str]], workdir, devices: int) -> list[subprocess.Popen]:
  """The processes of a multi-process run, each with `devices` fake CPU devices and its stderr in
  `workdir`/stderr_<i>.txt (`process_errors`): a pipe that nobody reads while the test waits on
  another process fills up and stalls its writer."""
  os.makedirs(workdir, exist_ok=True)
  processes = []
  for i, command in enumerate(commands):
    with open(os.path.join(workdir, f"stderr_{i}.txt"), "a") as stderr:
      processes.append(subprocess.Popen(command, cwd=REPO, env=cpu_env(devices), stdout=subprocess.DEVNULL,
                                        stderr=stderr))
  return processes


def wait_processes(processes: list[subprocess.Popen], workdir, timeout: float = 600) -> None:
  """Waits for `start_processes`'s processes to succeed; one still running after `timeout` seconds
  is killed (a pair can wait for each other forever), and a failure shows their errors."""
  deadline = time.time() + timeout
  try:
    for p in processes:
      p.wait(timeout=max(deadline - time.time(), 0))
  except subprocess.TimeoutExpired:
    for p in processes:
      p.kill()
      p.wait()
  assert [p.returncode for p in processes] == [0] * len(processes), process_errors(workdir, len(processes))


def process_errors(workdir, processes: int = 2) -> str:
  """The stderr files of `start_processes`: each process's first error (often the cause, the
  others' failures a consequence) and its end."""
  out = []
  for i in range(processes):
    text = open(os.path.join(workdir, f"stderr_{i}.txt")).read()
    first = next((line for line in text.splitlines() if "Error" in line), "")
    out.append(f"process {i}: first error: {first[:1000]}\n...{text[-2000:]}")
  return "\n".join(out)


def main_command(config: str, workdir, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "dinojax.main", "--config", config, "--workdir", str(workdir),
          *overrides]


def run_main(config: str, workdir, *overrides: str, devices: int = 8, check: bool = True,
             env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs the job to its end (in `env`, by default `cpu_env(devices)`); with `check`, a failure
  shows the end of its stderr."""
  result = subprocess.run(main_command(config, workdir, *overrides), capture_output=True, text=True,
                          env=env or cpu_env(devices), cwd=REPO, timeout=900)
  if check:
    assert result.returncode == 0, result.stderr[-4000:]
  return result


def kill_after_checkpoint(command: list[str], checkpoint_dir: pathlib.Path, devices: int = 8) -> None:
  """Starts `command` and kills it at its checkpoint `checkpoint_dir` (`kill_at_checkpoint`)."""
  kill_at_checkpoint(subprocess.Popen(command, cwd=REPO, env=cpu_env(devices),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                     checkpoint_dir)


def kill_at_checkpoint(proc: subprocess.Popen, checkpoint_dir: pathlib.Path) -> None:
  """SIGKILLs the running job `proc` as soon as `checkpoint_dir` appears (or it exits, or 10 minutes
  pass), as a preempted job dies."""
  deadline = time.time() + 600
  while not checkpoint_dir.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def final_state(workdir) -> tuple[int, dict]:
  """(step, state) of the latest checkpoint in `workdir`, restored as saved."""
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return step, restored["state"]


def losses(workdir) -> dict[int, float]:
  """{step: loss} from the run's metrics file."""
  return {r["step"]: r["loss"] for r in loop.read_metrics(workdir) if "loss" in r}


def events(workdir) -> event_accumulator.EventAccumulator:
  """The run's TensorBoard event files as TensorBoard reads them (a restart's purges applied), every
  event kept."""
  accumulator = event_accumulator.EventAccumulator(str(workdir), size_guidance={
      event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
  return accumulator.Reload()


def assert_events_match_metrics(workdir) -> None:
  """Each of the run's event-file scalar series (as TensorBoard reads them) has the steps and values
  (float32) of that metric's rows in metrics.jsonl, each step once."""
  accumulator = events(workdir)
  rows = loop.read_metrics(workdir)
  names = {k for r in rows for k in r if k != "step"}
  assert set(accumulator.Tags()["scalars"]) == names
  for name in names:
    logged = [(r["step"], r[name]) for r in rows if name in r]
    read = [(e.step, e.value) for e in accumulator.Scalars(name)]
    assert [s for s, _ in read] == [s for s, _ in logged], name
    assert len({s for s, _ in read}) == len(read), f"{name} logged twice at a step"
    np.testing.assert_allclose([v for _, v in read], [v for _, v in logged], rtol=1e-6, err_msg=name)


def assert_same_state(a, b) -> None:
  """Bit-identical pytrees: what an exact resume promises."""
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


DAMAGES = ("truncated_file", "flipped_bytes", "missing_manifest", "missing_state", "missing_meta")


def damage_checkpoint(step_dir: pathlib.Path, how: str) -> None:
  """Damages the checkpoint `step_dir` (`checkpoints/<step>`) as a full disk, a bad sector or a hand
  tidying the wrong directory would: its largest data file cut in half or 4 KiB of it inverted, its
  OCDBT manifest deleted, or a whole item deleted."""
  data = max((step_dir / "state/ocdbt.process_0/d").iterdir(), key=lambda f: f.stat().st_size)
  if how == "truncated_file":
    os.truncate(data, data.stat().st_size // 2)
  elif how == "flipped_bytes":
    raw = bytearray(data.read_bytes())
    start = max(0, len(raw) // 2 - 2048)
    raw[start:start + 4096] = bytes(b ^ 0xFF for b in raw[start:start + 4096])
    data.write_bytes(bytes(raw))
  elif how == "missing_manifest":
    (step_dir / "state/manifest.ocdbt").unlink()
  elif how in ("missing_state", "missing_meta"):
    shutil.rmtree(step_dir / how.removeprefix("missing_"))
  else:
    raise ValueError(f"Unknown damage {how!r}; choose one of {DAMAGES}.")
