"""Orbax checkpointing shared by every trainer: save a state pytree (plus JSON metadata), find the
latest step, restore straight onto a given sharding."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

# Replica-parallel saving splits each replicated array across its replicas, compiling a slicing
# program per array shape and device on a run's first save: minutes for a state of a few hundred
# small leaves, for nothing, since only big arrays gain from spreading their writes.
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=1 << 20),
    override=True)


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


def restore_subtree(directory: str | os.PathLike, target: Any, step: int | None = None) -> Any:
  """Restores only `target`'s part of the state saved under `directory` (e.g. `{"teacher": ...}` out
  of a whole training state) onto its shapes, dtypes and shardings, reading nothing else. A key the
  checkpoint lacks, or a shape that differs, is an error naming the key."""
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No checkpoint directory {directory}.")
  mgr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False),
                              item_names=("state", "meta"),
                              item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                             "meta": ocp.JsonCheckpointHandler()})
  step = mgr.latest_step() if step is None else step
  if step is None or step not in mgr.all_steps():
    raise FileNotFoundError(f"No checkpoint{'' if step is None else f' at step {step}'} in {mgr.directory}.")
  saved = {jax.tree_util.keystr(path): leaf for path, leaf in
           jax.tree_util.tree_flatten_with_path(mgr.item_metadata(step)["state"].tree)[0]}
  target = abstract_like(target)
  for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
    key = jax.tree_util.keystr(path)
    if key not in saved:
      raise KeyError(f"Checkpoint {mgr.directory} (step {step}) has no entry {key}.")
    if tuple(saved[key].shape) != tuple(leaf.shape):
      raise ValueError(f"Shape mismatch for {key} in {mgr.directory} (step {step}): the checkpoint has "
                       f"{tuple(saved[key].shape)}, the model expects {tuple(leaf.shape)}.")
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
  return mgr.restore(step, args=ocp.args.Composite(state=args))["state"]
