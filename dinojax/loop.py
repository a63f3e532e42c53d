"""Pieces every trainer and evaluation job runs on: the mesh, metrics files, progress, finiteness
checks, global batches, resuming from a checkpoint, and the training loop itself."""

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from PIL import Image
from tqdm import tqdm

from dinojax import checkpoint, convert, event_files, parallel, profile


class MetricWriter:
  """Appends `{"step": s, **metrics}` lines to `<workdir>/metrics.jsonl` and the same scalars to a
  TensorBoard event file in `<workdir>` (process 0 only)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = jax.process_index() == 0
    self.events = event_files.EventWriter(workdir)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {k: float(v) for k, v in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **row}) + "\n")
    self.events.scalars(step, row)

  def images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """(h, w, 3) uint8 pictures: TensorBoard images, and `<workdir>/pictures/<name>_<step>.png`."""
    if not self.enabled:
      return
    os.makedirs(os.path.join(self.workdir, "pictures"), exist_ok=True)
    for name, image in images.items():
      Image.fromarray(image).save(os.path.join(self.workdir, "pictures", f"{name}_{step:07d}.png"))
    self.events.images(step, images)

  def close(self) -> None:
    self.events.close()

  def resume_at(self, step: int) -> bool:
    """Forgets the rows after `step`, written by a run that died before checkpointing them (the
    resumed run writes them again, so each step is logged once, by the run that reached it), and a
    line cut short by that death. Returns whether an evaluation's row (one without a training loss)
    at `step` survives; every process gets process 0's answer. The event files' later steps are
    purged by the next one (`event_files.EventWriter`'s `purge_step`)."""
    evaluated = False
    self.events = event_files.EventWriter(self.workdir, purge_step=step + 1)
    if self.enabled and os.path.exists(self.path):
      with open(self.path) as f:
        lines = f.readlines()
      kept = []
      for line in lines:
        try:
          row = json.loads(line)
        except ValueError:
          continue
        if row["step"] <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
          evaluated |= row["step"] == step and "loss" not in row
      if kept != lines:  # atomically: a second death here must not lose the kept rows
        with open(self.path + ".tmp", "w") as f:
          f.writelines(kept)
        os.replace(self.path + ".tmp", self.path)
    if jax.process_count() > 1:
      checkpoint.barrier("metrics_resumed")  # see checkpoint.damage
      evaluated = bool(multihost_utils.broadcast_one_to_all(np.int32(evaluated)))
    return evaluated


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


# ---------------------------------------------------------------------------------------------------
# Mesh, resume and the loop (shared by every trainer)
# ---------------------------------------------------------------------------------------------------
def make_mesh(config):
  """The config's mesh and logical-axis rules (`config_check.mesh_problems` has checked that the
  train and eval batches split evenly over its batch axes)."""
  mesh = parallel.make_mesh(config.mesh, dcn_axes=config.get("mesh_dcn"))
  rules = tuple(tuple(r) for r in config.sharding_rules)
  return mesh, rules


@dataclasses.dataclass(frozen=True)
class Run:
  """What one run's loop works with, set up by its job: the config and workdir, the mesh and its
  logical-axis rules, the data iterator (with a position, saved in checkpoints) and the shardings
  of its global batches, the checkpoint manager, the skipped-image counter, and `run_meta`: entries
  saved with every checkpoint that a resume must find unchanged (e.g. the frozen teacher's source)."""
  config: Any
  workdir: str
  mesh: Mesh
  rules: tuple
  data_iter: Any
  batch_shardings: dict
  ckpt: Any
  skipped: Any
  run_meta: dict = dataclasses.field(default_factory=dict)


def restore(run: Run, state: Any, shardings: Any, init_from: str = "",
            init_keys: Sequence[str] = ()) -> tuple[Any, int]:
  """(state, first step): the run's newest intact checkpoint if it has one (state, data iterator
  position, skipped-image count; damaged ones are skipped, see `checkpoint.restore_newest_intact`),
  else the `init_keys` entries of the state of `init_from` (another run's workdir: a new phase with a
  fresh optimizer and schedule), else `state` unchanged at step 0.

  `run.run_meta` entries were saved with every checkpoint (see `train`); resuming with different
  values (e.g. another frozen teacher) is an error naming the entry.
  """
  resumed = checkpoint.restore_newest_intact(run.ckpt, checkpoint.abstract_like(state, shardings))
  if resumed is not None:
    start, state, meta = resumed
    for key, value in run.run_meta.items():
      if key in meta and meta[key] != value:
        raise ValueError(f"This run's checkpoints were written with {key}={meta[key]!r}; resuming with "
                         f"{key}={value!r} would silently change the run; restore the earlier value "
                         "or use a new workdir.")
    run.data_iter.set_state(meta["data"])
    run.skipped.restore(meta)
    logging.info("Resumed from step %d.", start)
    return state, start
  if init_from:
    source = checkpoint.manager(os.path.join(init_from, "checkpoints"), None)
    previous = checkpoint.restore(source, checkpoint.abstract_like(state, shardings))
    state = {**state, **{k: previous[k] for k in init_keys}}
    logging.info("Initialised %s from %s (step %d).", ", ".join(init_keys), init_from,
                 int(previous["step"]))
  return state, 0


def compiled_on_every_process(step_fn: Callable, *args) -> Callable:
  """`step_fn` (a jitted function) compiled for `args`, returned once every process has compiled
  it. The first run of a program's cross-process collectives waits only 30 s for the other
  processes (gloo's rendezvous), and one process can compile for longer than that: a loaded host, or
  a program the others load from the compilation cache. Other callables are returned as they are."""
  if jax.process_count() == 1 or not hasattr(step_fn, "lower"):
    return step_fn
  compiled = step_fn.lower(*args).compile()
  checkpoint.barrier("compiled_train_step")
  return compiled


def evaluate(evaluations: Sequence, params: Any, step: int, writer: MetricWriter) -> dict:
  """Runs `evaluations` (`evaluators.base.Evaluation`s) on `params` and writes what they return at
  `step`: the scalars as one row of metrics, the pictures as images. Returns the scalars."""
  results = {}
  for evaluation in evaluations:
    results.update(evaluation.evaluator(params))
  images = {k: v for k, v in results.items() if np.ndim(v) == 3}
  scalars = {k: v for k, v in results.items() if k not in images}
  if scalars:
    writer.write(step, scalars)
    log_metrics(step, scalars)
  if images:
    writer.images(step, images)
  return scalars


def train(run: Run, state: Any, train_step: Callable, *, start: int, num_steps: int,
          step_args: Callable[[Any], tuple] = lambda state: (), evaluations: Sequence = (),
          eval_params: Callable[[Any], Any] = lambda state: state) -> tuple[Any, dict]:
  """Steps `start + 1 .. num_steps` of `train_step(state, batch, *step_args(state)) -> (state,
  metrics)`, the batches from `run.data_iter`: `step_args` gives what the step reads beside state and
  batch (frozen params, this step's schedules computed on the devices from the state's step), none
  by default. Metrics every `config.log_every` steps (metrics.jsonl, progress bar), checkpoints every
  `config.checkpoint.every` (with the data iterator's state, so resuming is exact, and
  `run.run_meta`), and each of `evaluations` (`evaluators.base.Evaluation`) run on
  `eval_params(state)` when it is due: on its schedule, at the last step, and before the first step
  where it asks to (`evaluate`). A non-finite metric stops the run naming the step. Resumed at
  `start`, the rows a dead run wrote past it are dropped, and the evaluations due at `start` that it
  did not write run first: a run killed between its last save and its final evaluation, restarted at
  its last step, still evaluates. The step runs under `jax.transfer_guard("disallow")`: everything it
  reads beside the batch must already be on the devices. Returns (final state, summary of the last
  logged loss and evaluations)."""
  config, workdir, data_iter, skipped = run.config, run.workdir, run.data_iter, run.skipped
  writer = MetricWriter(workdir)
  evaluated = writer.resume_at(start)
  throughput = Throughput(config.batch_size)
  bar = progress_bar(num_steps, start, config.batch_size)
  profiler = profile.Window(config.get("profile", {}).get("steps"), workdir)
  last_saved = start or None  # the checkpoint resumed from was verified (checkpoint.damage)
  summary = {}

  def save(step, force=False):
    meta = {**run.run_meta, "data": data_iter.get_state(), **skipped.state(), "step": step}
    checkpoint.save(run.ckpt, step, state, meta, force=force)

  def run_evaluations(step):
    due = [e for e in evaluations if e.due(step, num_steps)]
    if due:
      summary.update(evaluate(due, eval_params(state), step, writer))

  try:
    with parallel.activation_sharding(run.mesh, run.rules):
      if start and not evaluated:  # the dead run saved, then died before evaluating
        run_evaluations(start)
      if not start:  # those that look at the features before training
        run_evaluations(0)
      for step in range(start + 1, num_steps + 1):
        # Only the batch crosses to the devices, explicitly (a multi-process run's
        # `make_array_from_process_local_data` is a guarded transfer): an implicit transfer (a NumPy
        # array or a Python number handed to the step, params copied per call) fails here instead
        # of silently slowing every step. Metrics come back explicitly, at the steps that log them.
        batch = global_batch(next(data_iter), run.batch_shardings)
        with jax.transfer_guard("disallow"):
          if step == start + 1:
            train_step = compiled_on_every_process(train_step, state, batch, *step_args(state))
          profiler.before(step)
          state, metrics = train_step(state, batch, *step_args(state))
          profiler.after(step, state)
        bar.update(1)
        is_last = step == num_steps
        if step % config.log_every == 0 or is_last:
          metrics = jax.device_get(metrics)
          check_finite(metrics, step, last_saved)
          metrics.update(throughput.update(step), skipped_images=skipped.count)
          writer.write(step, metrics)
          bar.set_postfix(loss=f"{metrics['loss']:.4f}",
                          **{"img/s": f"{metrics.get('images_per_s', 0):.1f}"})
          summary.update(loss=float(metrics["loss"]))
        if step % config.checkpoint.every == 0 or is_last:
          check_finite(jax.device_get(metrics), step, last_saved)
          save(step, force=is_last)
          last_saved = step
        run_evaluations(step)
  finally:  # A failing run still finishes the checkpoint it was writing.
    bar.close()
    writer.close()
    profiler.close()
    run.ckpt.wait_until_finished()
  return state, summary


def export_backbone(params, path: str) -> None:
  """Writes a backbone's params in the official naming (`convert.params_to_state_dict`: what a
  PyTorch `DinoVisionTransformer` loads, and `convert.from_checkpoint` reads back), gathered from the
  mesh; process 0 writes."""
  params = jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), params)
  if jax.process_index() == 0:
    convert.save_state_dict(convert.params_to_state_dict(params), path)
    logging.info("Wrote the backbone to %s.", path)
