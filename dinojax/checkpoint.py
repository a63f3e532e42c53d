"""Orbax checkpointing shared by every trainer: save a state pytree (plus JSON metadata) with a digest
of its files, find the newest checkpoint that is intact, restore straight onto a given sharding."""

import hashlib
import itertools
import json
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

# Replica-parallel saving splits each replicated array across its replicas, compiling a slicing
# program per array shape and device on a run's first save: minutes for a state of a few hundred
# small leaves, for nothing, since only big arrays gain from spreading their writes. Our own registry
# (orbax's standard handlers, this one for jax.Array) leaves orbax's global one alone.
TYPE_HANDLERS = ocp.type_handlers.create_type_handler_registry(
    *((t, ocp.type_handlers.get_type_handler(t)) for t in (int, float, bytes, np.number, np.ndarray)),
    (jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=1 << 20)),
    *((t, ocp.type_handlers.get_type_handler(t)) for t in (str, type(ocp.PLACEHOLDER))))

ITEMS = ("state", "meta")
_EXCHANGES = itertools.count()  # every process checks the same checkpoints in the same order
DIGEST = "_DIGEST.json"  # in each item's directory: {file: [bytes, sha256]} of the item's other files


def _sha256(path: str) -> tuple[int, str]:
  with open(path, "rb") as f:
    digest = hashlib.file_digest(f, "sha256")
  return os.path.getsize(path), digest.hexdigest()


def _files(directory: str) -> list[str]:
  """Every file under `directory` but the digest, relative to it, sorted."""
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, _, names in os.walk(directory) for name in names if name != DIGEST)


def write_digest(directory: str) -> None:
  """Records the size and SHA-256 of every file of a checkpoint item in `directory/_DIGEST.json`."""
  directory = os.fspath(directory)
  digest = {name: list(_sha256(os.path.join(directory, name))) for name in _files(directory)}
  with open(os.path.join(directory, DIGEST), "w") as f:
    json.dump(digest, f)


class _Digested:
  """An item handler that writes the item's digest once every process has written the item: orbax
  calls `finalize` on process 0 then, before it commits the step, so that no committed checkpoint
  lacks its digest."""

  def finalize(self, directory):
    super().finalize(directory)
    write_digest(directory)


class _StateHandler(_Digested, ocp.PyTreeCheckpointHandler):
  pass


class _MetaHandler(_Digested, ocp.JsonCheckpointHandler):
  pass


def manager(directory: str | os.PathLike, max_to_keep: int | None = 3,
            save_every: int = 1) -> ocp.CheckpointManager:
  """A manager over `directory` keeping the last `max_to_keep` checkpoints, saving every N steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=save_every,
                                         create=True)
  handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
  state, meta = _StateHandler(type_handler_registry=TYPE_HANDLERS), _MetaHandler()
  for args in (ocp.args.PyTreeSave, ocp.args.PyTreeRestore):
    handlers.add("state", args, state)
  for args in (ocp.args.JsonSave, ocp.args.JsonRestore):
    handlers.add("meta", args, meta)
  return ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options,
                               handler_registry=handlers)


def save(mgr: ocp.CheckpointManager, step: int, state: Any, meta: dict | None = None,
         force: bool = False) -> bool:
  """Saves `state` (and JSON-able `meta`) at `step`; returns whether a checkpoint was written."""
  items = {"state": ocp.args.PyTreeSave(state)}
  if meta is not None:
    items["meta"] = ocp.args.JsonSave(meta)
  return mgr.save(step, args=ocp.args.Composite(**items), force=force)


def latest_step(mgr: ocp.CheckpointManager) -> int | None:
  return mgr.latest_step()


def saved_like(mgr: ocp.CheckpointManager, step: int, sharding: Any | None = None) -> Any:
  """ShapeDtypeStructs of the state saved at `step` of `mgr` (its shapes and dtypes, read from the
  metadata), each with `sharding`: a target that restores the checkpoint onto this process's mesh
  whatever mesh it was saved from."""
  saved = ocp.CheckpointManager(os.fspath(mgr.directory), item_handlers={
      "state": ocp.StandardCheckpointHandler()}).item_metadata(step)["state"]
  return dict(jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), saved,
                           is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype")))


def abstract_like(state: Any, shardings: Any | None = None) -> Any:
  """ShapeDtypeStructs (with shardings) describing `state` (arrays or ShapeDtypeStructs), the target
  of a restore; `shardings` replaces the ones `state` carries."""
  if shardings is None:
    shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), state)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def _local_damage(step_dir: str, items: tuple[str, ...]) -> str | None:
  """What is wrong with this process's share of the files of `items` in `step_dir` (every
  process checks every N-th file of each digest), or None. A checkpoint written before digests
  existed (every item present, none with a digest) cannot be checked: it is restored unverified."""
  if all(os.path.isdir(os.path.join(step_dir, item)) and
         not os.path.exists(os.path.join(step_dir, item, DIGEST)) for item in items):
    logging.warning("Checkpoint %s has no digest (written by an older dinojax): restoring it "
                    "unverified.", step_dir)
    return None
  for item in items:
    directory = os.path.join(step_dir, item)
    if not os.path.isdir(directory):
      return f"its {item}/ is missing"
    try:
      with open(os.path.join(directory, DIGEST)) as f:
        recorded = json.load(f)
    except FileNotFoundError:
      return f"{item}/{DIGEST} is missing"
    except ValueError:
      return f"{item}/{DIGEST} is unreadable"
    for name in sorted(recorded)[jax.process_index()::jax.process_count()]:
      path, (size, sha256) = os.path.join(directory, name), recorded[name]
      if not os.path.isfile(path):
        return f"{item}/{name} is missing"
      found_size, found_sha256 = _sha256(path)
      if found_size != size:
        return f"{item}/{name} has {found_size} bytes, its digest says {size}"
      if found_sha256 != sha256:
        return f"{item}/{name} differs from its digest"
  return None


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (orbax's process barrier, under a name made
  unique per call: by default a tiny all-device collective, as `multihost_utils.sync_global_devices`)."""
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes(f"dinojax:{name}")


def damage(mgr: ocp.CheckpointManager, step: int, items: tuple[str, ...] = ITEMS) -> str | None:
  """Why checkpoint `step` of `mgr` cannot be trusted (an item, a file, or a file's content that
  does not match the digest written with it), or None when it is intact. The processes split the
  reading and agree on the answer."""
  reason = _local_damage(os.path.join(os.fspath(mgr.directory), str(step)), items)
  if jax.process_count() == 1:
    return reason
  # Met first (a resume's first exchange: one process may still be compiling its init), as the
  # first run of a collective waits only 30 s for the other processes.
  barrier(f"damage_{next(_EXCHANGES)}")
  damaged = multihost_utils.process_allgather(np.int32(reason is not None))
  if not damaged.any():
    return None
  return reason or f"found by process {int(np.argmax(damaged))}"


def _blocks_layouts(tree: Any) -> dict[str, str]:
  """Where `tree` holds ViT blocks, and in which layout: {path above them: "stacked" or "unrolled"}."""
  layouts = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if m := re.match(r"(.*?)\['blocks(_\d+)?'\]", jax.tree_util.keystr(path)):
      layouts[m.group(1)] = "unrolled" if m.group(2) else "stacked"
  return layouts


def check_blocks_layout(saved: Any, target: Any, where: str) -> None:
  """Fails, naming the mismatch, when a checkpoint's ViT blocks are stacked (written with
  `model.scan_blocks=True`) where `target` wants them one per block, or the other way round."""
  target_layouts = _blocks_layouts(target)
  for path, layout in _blocks_layouts(saved).items():
    if target_layouts.get(path, layout) != layout:
      # Scanned runs from before the stacked layout (2026-12-03) hold their blocks one per block.
      older = "" if layout == "stacked" else (
          " Runs started with scan_blocks=True before scanned blocks were stored stacked hold them "
          "unrolled: resume those with scan_blocks=False, the same model.")
      raise ValueError(
          f"{where} holds the ViT blocks at {path} {layout} (written with model.scan_blocks="
          f"{layout == 'stacked'}), this run's model has them {target_layouts[path]}: resume with the "
          f"scan_blocks the run was started with (a frozen backbone read from a run converts itself).{older}")


def _restore(mgr: ocp.CheckpointManager, target: Any, step: int, with_meta: bool) -> Any:
  target = abstract_like(target)
  check_blocks_layout(saved_like(mgr, step), target, f"Checkpoint step {step} in {mgr.directory}")
  items = {"state": ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))}
  if with_meta:
    items["meta"] = ocp.args.JsonRestore()
  restored = mgr.restore(step, args=ocp.args.Composite(**items))
  if with_meta:
    return restored["state"], restored["meta"]
  return restored["state"]


def restore(mgr: ocp.CheckpointManager, target: Any, step: int | None = None,
            with_meta: bool = False) -> Any:
  """Restores the state at `step` (default: latest) onto `target`'s shapes, dtypes and shardings.

  `target` is a pytree of arrays or ShapeDtypeStructs (see `abstract_like`). Raises FileNotFoundError
  when there is nothing to restore, ValueError naming the damage when the checkpoint's files do not
  match their digest.
  """
  step = mgr.latest_step() if step is None else step
  if step is None or step not in mgr.all_steps():
    raise FileNotFoundError(f"No checkpoint{'' if step is None else f' at step {step}'} in "
                            f"{mgr.directory}.")
  items = ITEMS if with_meta else ("state",)
  if reason := damage(mgr, step, items):
    raise ValueError(f"Checkpoint step {step} in {mgr.directory} is damaged: {reason}.")
  return _restore(mgr, target, step, with_meta)


def restore_newest_intact(mgr: ocp.CheckpointManager, target: Any) -> tuple[int, Any, dict] | None:
  """(step, state, meta) of the newest checkpoint of `mgr` that is intact (see `damage`), restored
  onto `target`; None when there is no checkpoint. A damaged checkpoint is skipped with a warning
  naming it and why; the damaged ones newer than the one restored are moved aside (`set_aside`), as
  the resumed run writes those steps again. Raises FileNotFoundError naming the directory when none
  is intact."""
  steps = sorted(mgr.all_steps(), reverse=True)
  if not steps:
    return None
  for i, step in enumerate(steps):
    if reason := damage(mgr, step):
      logging.warning("Checkpoint step %d in %s is damaged (%s); trying the one before.", step,
                      mgr.directory, reason)
      continue
    if i:
      set_aside(mgr, steps[:i])
    return step, *_restore(mgr, target, step, with_meta=True)
  raise FileNotFoundError(f"No intact checkpoint in {mgr.directory}: every one ({steps}) is damaged "
                          "(see the warnings); move them away to start the run afresh.")


def set_aside(mgr: ocp.CheckpointManager, steps) -> None:
  """Moves checkpoints `steps` of `mgr` into `<directory>_damaged/<step>[.n]`, out of the run's way
  but kept for inspection (process 0 moves; every process then sees the same steps)."""
  directory = os.fspath(mgr.directory)
  if jax.process_index() == 0:
    for step in steps:
      destination = os.path.join(f"{directory}_damaged", str(step))
      for n in itertools.count(1):
        if not os.path.exists(destination):
          break
        destination = os.path.join(f"{directory}_damaged", f"{step}.{n}")
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      os.rename(os.path.join(directory, str(step)), destination)
      logging.warning("Moved the damaged checkpoint step %d to %s.", step, destination)
  barrier(f"set_aside_{next(_EXCHANGES)}")
  mgr.reload()


def _reader(directory: str | os.PathLike) -> ocp.CheckpointManager:
  """A manager that reads the checkpoints under `directory` (which must exist) item by item."""
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No checkpoint directory {directory}.")
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False),
                               item_names=("state", "meta"),
                               item_handlers={"state": ocp.PyTreeCheckpointHandler(
                                   type_handler_registry=TYPE_HANDLERS),
                                              "meta": ocp.JsonCheckpointHandler()})


def _existing_step(mgr: ocp.CheckpointManager, step: int | None) -> int:
  """`step` (None: the latest) if `mgr` holds it, else an error naming the directory."""
  step = mgr.latest_step() if step is None else step
  if step is None or step not in mgr.all_steps():
    raise FileNotFoundError(f"No checkpoint{'' if step is None else f' at step {step}'} in {mgr.directory}.")
  return step


def saved_structure(directory: str | os.PathLike, step: int | None = None) -> Any:
  """The tree of the state saved at `step` (None: the latest) under `directory`, from its metadata
  (nothing else is read): nested dicts whose leaves carry each array's shape and dtype. A missing
  step, or metadata that cannot be read, is an error naming the checkpoint."""
  mgr = _reader(directory)
  step = _existing_step(mgr, step)
  try:
    return mgr.item_metadata(step)["state"].tree
  except Exception as e:  # orbax's error names neither the step nor that the checkpoint is damaged
    raise ValueError(f"Checkpoint step {step} in {mgr.directory} is damaged: its metadata cannot be "
                     f"read ({type(e).__name__}: {e}).") from e


def restore_subtree(directory: str | os.PathLike, target: Any, step: int | None = None) -> Any:
  """Restores only `target`'s part of the state saved under `directory` (e.g. `{"teacher": ...}` out
  of a whole training state) onto its shapes, dtypes and shardings, reading nothing else. A key the
  checkpoint lacks, or a shape that differs, is an error naming the key; so is damage (see `damage`)."""
  mgr = _reader(directory)
  step = _existing_step(mgr, step)
  if reason := damage(mgr, step, ("state",)):
    raise ValueError(f"Checkpoint step {step} in {mgr.directory} is damaged: {reason}.")
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
