"""A profiler window over a run's steps: `--config.profile.steps=(start, stop)` traces steps start,
start+1, ..., stop-1 (step 1 is the first update) with `jax.profiler` into the workdir, where
TensorBoard's profile plugin (`tensorboard --logdir WORKDIR`) and Perfetto (the
`plugins/profile/<run>/perfetto_trace.json.gz` file) read it. Every process traces its own host."""

from typing import Any, Sequence

import jax
from absl import logging


class Window:
  """Starts the trace before the window's first step and stops it once its last step has run.
  `steps` () or None: no window."""

  def __init__(self, steps: Sequence[int] | None, logdir: str):
    if steps and not 0 <= steps[0] < steps[1]:
      raise ValueError(f"profile.steps={tuple(steps)}: must be (start, stop) with 0 <= start < stop.")
    self.start, self.stop = tuple(steps) if steps else (0, 0)
    self.logdir = logdir
    self.tracing = False

  def before(self, step: int) -> None:
    """Called before step `step` runs (a resumed run inside the window traces what is left of it)."""
    if not self.tracing and self.start <= step < self.stop:
      jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)
      self.tracing = True

  def after(self, step: int, outputs: Any) -> None:
    """Called after step `step` was dispatched with its `outputs`: waits for them at the window's
    end, so the trace holds the device's work, not only its dispatch."""
    if self.tracing and step >= self.stop - 1:
      jax.block_until_ready(outputs)
      self.close()
      logging.info("Wrote the profile of steps %d-%d to %s/plugins/profile.", self.start,
                   self.stop - 1, self.logdir)

  def close(self) -> None:
    """Stops a trace still running (the run ended or failed inside the window)."""
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False
