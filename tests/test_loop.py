"""The shared loop, in process on a counter: a run that died after a checkpoint leaves its metrics
as an uninterrupted run's once resumed (rows past the checkpoint dropped, a due evaluation it never
wrote run again)."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import jobs
from dinojax import checkpoint, loop, parallel
from dinojax.data import pipeline
from dinojax.evaluators import base

CONFIG = ml_collections.ConfigDict({"batch_size": 8, "log_every": 1, "checkpoint": {"every": 2},
                                    "eval": {"every": 4}})


class Counting:
  """Batches 1, 2, ... as a data iterator with a position."""

  def __init__(self):
    self.position = 0

  def __next__(self):
    self.position += 1
    return {"x": np.full((8,), self.position, np.float32)}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


@jax.jit
def _step(state, batch):
  return {"w": state["w"] + batch["x"].sum(), "step": state["step"] + 1}, {"loss": batch["x"].mean()}


def _run(workdir, die_at=None, profile_steps=(), host_batch=False):
  """The loop to step 8 (resuming from `workdir`'s checkpoints), dying in step `die_at`, tracing
  `profile_steps`; with `host_batch` the step is handed a NumPy batch, an implicit transfer."""
  mesh = parallel.make_mesh({"data": 8})
  replicated = NamedSharding(mesh, P())
  state = {"w": jnp.zeros((), jnp.float32), "step": jnp.zeros((), jnp.int32)}
  shardings = jax.tree.map(lambda _: replicated, state)
  state = jax.device_put(state, shardings)
  config = CONFIG.copy_and_resolve_references()
  config.profile = {"steps": profile_steps}
  run = loop.Run(config=config, workdir=str(workdir), mesh=mesh, rules=(), data_iter=Counting(),
                 batch_shardings={"x": NamedSharding(mesh, P("data"))},
                 ckpt=checkpoint.manager(workdir / "checkpoints", None, CONFIG.checkpoint.every),
                 skipped=pipeline.SkipCounter())
  state, start = loop.restore(run, state, shardings)

  def train_step(state, batch):
    if int(jax.device_get(state["step"])) + 1 == die_at:
      raise KeyboardInterrupt
    return _step(state, {"x": np.ones(8, np.float32)} if host_batch else batch)

  evaluated = []

  def evaluate(state):
    evaluated.append(int(state["step"]))
    return {"w": state["w"]}

  loop.train(run, state, train_step, start=start, num_steps=8,
             evaluations=[base.Evaluation("w", evaluate, every=config.eval.every)])
  return evaluated


def test_a_resumed_run_logs_each_step_once_and_makes_up_a_lost_evaluation(tmp_path):
  assert _run(tmp_path / "straight", profile_steps=(2, 4)) == [4, 8]
  traces = {t.name: t.stat().st_size for t in (tmp_path / "straight/plugins/profile").glob("*/*")}
  xplane = [name for name in traces if name.endswith(".xplane.pb")]  # TensorBoard's; then Perfetto's
  assert len(xplane) == 1 and traces[xplane[0]] > 1000 and traces["perfetto_trace.json.gz"] > 1000
  with pytest.raises(KeyboardInterrupt):  # died in step 7, after checkpoint 6
    _run(tmp_path / "dead", die_at=7)
  # ... and had died between checkpoint 4 and its evaluation before: lose checkpoint 6 and that row.
  checkpoint.manager(tmp_path / "dead/checkpoints", None).delete(6)
  metrics = tmp_path / "dead/metrics.jsonl"
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 4, 5, 6]
  metrics.write_text("".join(json.dumps(r) + "\n" for r in rows if r != rows[4]) + '{"step": 7, "lo')

  assert _run(tmp_path / "dead") == [4, 8]
  straight, resumed = (loop.read_metrics(tmp_path / run) for run in ("straight", "dead"))
  assert ([(r["step"], r.get("loss"), r.get("w")) for r in resumed] ==
          [(r["step"], r.get("loss"), r.get("w")) for r in straight])
  # TensorBoard reads the same scalars; the resumed run's restart purged the dead run's steps 5-7
  # (its evaluation at step 4, deleted above by hand, is the dead run's and stays in its file).
  jobs.assert_events_match_metrics(tmp_path / "straight")
  assert ([(e.step, e.value) for e in jobs.events(tmp_path / "dead").Scalars("loss")] ==
          [(r["step"], r["loss"]) for r in straight if "loss" in r])


def test_an_implicit_host_transfer_in_the_step_is_an_error(tmp_path):
  with pytest.raises(jax.errors.JaxRuntimeError, match="Disallowed host-to-device transfer"):
    _run(tmp_path, host_batch=True)


def test_a_finished_run_restarted_makes_up_its_missing_final_evaluation(tmp_path):
  # Killed between its last save and its final evaluation: the restart, at the last step, runs
  # no step but that evaluation, and a second restart finds it written.
  assert _run(tmp_path) == [4, 8]
  metrics = tmp_path / "metrics.jsonl"
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  metrics.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
  assert rows[-1] == {"step": 8, "w": rows[-1]["w"]}
  assert _run(tmp_path) == [8]
  assert loop.read_metrics(tmp_path) == rows
  assert _run(tmp_path) == []
