"""Orbax checkpointing shared by every trainer: save a state pytree (plus JSON metadata), find the
latest step, restore straight onto a given sharding."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(directory: str | os.PathLike, max_to_keep: int | None = 3,
            save_every: int = 1) -> ocp.CheckpointManager:
  """A manager over `directory` keeping the last `max_to_keep` checkpoints, saving every N steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=save_every,
                                         create=True)
  return ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options)


def save(mgr: ocp.CheckpointManager, step: int, state: Any, meta: dict | None = None,
         force: bool = False) -> bool:
  """Saves `state` (and JSON-able `meta`) at `step`; returns whether a checkpoint was written."""
  items = {"state": ocp.args.StandardSave(state)}
  if meta is not None:
    items["meta"] = ocp.args.JsonSave(meta)
  return mgr.save(step, args=ocp.args.Composite(**items), force=force)


def latest_step(mgr: ocp.CheckpointManager) -> int | None:
  return mgr.latest_step()


def abstract_like(state: Any, shardings: Any | None = None) -> Any:
  """ShapeDtypeStructs (with shardings) describing `state` (arrays or ShapeDtypeStructs), the target
  of a restore; `shardings` replaces the ones `state` carries."""
  if shardings is None:
    shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), state)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def restore(mgr: ocp.CheckpointManager, target: Any, step: int | None = None,
            with_meta: bool = False) -> Any:
  """Restores the state at `step` (default: latest) onto `target`'s shapes, dtypes and shardings.

  `target` is a pytree of arrays or ShapeDtypeStructs (see `abstract_like`). Raises FileNotFoundError
  when there is nothing to restore.
  """
  step = mgr.latest_step() if step is None else step
  if step is None or step not in mgr.all_steps():
    raise FileNotFoundError(f"No checkpoint{'' if step is None else f' at step {step}'} in "
                            f"{mgr.directory}.")
  items = {"state": ocp.args.StandardRestore(abstract_like(target))}
  if with_meta:
    items["meta"] = ocp.args.JsonRestore()
  restored = mgr.restore(step, args=ocp.args.Composite(**items))
  if with_meta:
    return restored["state"], restored["meta"]
  return restored["state"]
