"""Pieces every trainer's loop uses: metrics files, progress, finiteness checks, global batches."""

import json
import math
import os
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm


class MetricWriter:
  """Appends `{"step": s, **metrics}` lines to `<workdir>/metrics.jsonl` (process 0 only)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = jax.process_index() == 0

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]


def progress_bar(total: int, initial: int, images_per_step: int) -> tqdm:
  """tqdm bar with step time, images/s and ETA (process 0 only)."""
  return tqdm(total=total, initial=initial, disable=jax.process_index() != 0, unit="step",
              dynamic_ncols=True, mininterval=1.0, postfix={"img/s": "-"},
              desc=f"train ({images_per_step} img/step)")


class Throughput:
  def __init__(self, images_per_step: int):
    self.images_per_step = images_per_step
    self.last_time, self.last_step = time.perf_counter(), None

  def update(self, step: int) -> dict:
    now = time.perf_counter()
    out = {}
    if self.last_step is not None and step > self.last_step:
      dt = (now - self.last_time) / (step - self.last_step)
      out = {"step_time_s": dt, "images_per_s": self.images_per_step / dt}
    self.last_time, self.last_step = now, step
    return out


def check_finite(metrics: dict, step: int, checkpoint_step: int | None) -> None:
  """Stops the run at the first non-finite metric (losses, and the updated params' norm, so a bad
  update is caught before it is checkpointed), naming the step and the checkpoint kept."""
  bad = {k: float(v) for k, v in metrics.items() if not math.isfinite(float(v))}
  if bad:
    kept = (f"the last good checkpoint is step {checkpoint_step}" if checkpoint_step is not None
            else "no checkpoint was written")
    raise FloatingPointError(f"Non-finite loss at step {step}: {bad}; stopping ({kept}).")


def global_batch(local: dict, shardings: dict) -> dict:
  """Host-local NumPy batch -> global jax.Arrays laid out by `shardings` (multi-host safe)."""
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in local.items()}


def log_metrics(step: int, metrics: dict) -> None:
  logging.info("step %d: %s", step, ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items())))
