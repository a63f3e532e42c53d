"""Frozen backbones, from wherever they come: the one place that turns a released DINOv2 checkpoint, or
a dinojax run's workdir, into a ViT and its params on the mesh. dino.txt, the evaluation jobs,
distillation's teacher and Talk2DINO all read their backbones through it.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from dinojax import checkpoint, convert, hub, parallel
from dinojax.models.vit import ViT, stack_blocks, unstack_blocks, vit
from dinojax.ops import platform

# The state entry of a dinojax run that holds the backbone to reuse: SSL's EMA teacher, distillation's
# EMA of the student (the one it exports).
RUN_BACKBONE = {"ssl": "teacher", "distill": "ema"}


def build_vit(model_config) -> ViT:
  """The ViT a config's `model` entry describes: a `variant` (`vit_small`, ...) and the fields it
  overrides, or every field."""
  kwargs = dict(model_config)
  variant = kwargs.pop("variant", None)
  kwargs["dtype"] = jnp.dtype(kwargs.get("dtype", "float32"))
  return vit(variant, **kwargs) if variant is not None else ViT(**kwargs)


def read_run_config(workdir: str) -> dict:
  """The config a dinojax SSL or distillation run recorded in WORKDIR/config.json."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"backbone.workdir={workdir!r} has no config.json: not a dinojax run, or "
                            "one started before runs recorded their config.")
  with open(path) as f:
    run = json.load(f)
  if run.get("job") not in RUN_BACKBONE:
    raise ValueError(f"backbone.workdir={workdir!r} is a {run.get('job')!r} run; a backbone comes from "
                     f"one of {sorted(RUN_BACKBONE)}.")
  return run


def place(module: nn.Module, params, example, mesh, rules):
  """Loaded params (`{"params": ...}`, host arrays) put on the shardings the logical axes of
  `module.init(rng, example)` map to."""
  abstract = jax.eval_shape(module.init, jax.random.key(0), example)
  return parallel.to_device(params, parallel.logical_to_shardings(abstract, mesh, rules))


def blocks_like(tree, like):
  """`tree` with each ViT's params (a dict holding `patch_embed`) in the blocks layout of the same
  place in `like` (stacked `blocks` or `blocks_0`, ...; see `vit.stack_blocks`): a run's backbone
  restores into a model that scans its blocks, or not, whichever way the run did."""
  if not isinstance(tree, dict) or not isinstance(like, dict):
    return tree
  if "patch_embed" in tree and "blocks" in tree and "blocks_0" in like:
    tree = unstack_blocks(tree)
  elif "patch_embed" in tree and "blocks_0" in tree and "blocks" in like:
    tree = stack_blocks(tree)
  return {k: blocks_like(v, like.get(k)) for k, v in tree.items()}


def restore_from_run(workdir: str, init, entry: tuple[str, ...], mesh, rules, step: int = 0,
                     flag: str = "backbone.workdir"):
  """(params, source): the state entry at key path `entry` (e.g. `("teacher", "backbone")`) of a
  dinojax run's checkpoint at `step` (0: its latest), restored alone onto the shardings the logical
  axes of `init(rng)` map to, its ViT blocks restacked when the run saved the other layout (see
  `blocks_like`). `source` names the run and the step: saved with the checkpoints of a run built on
  it, it keeps a resume from switching backbones silently. `flag` is the config entry that named
  `workdir`, for the errors."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{flag}={workdir!r} has no checkpoints/ yet (not a dinojax run?).")
  step = step or checkpoint.latest_step(checkpoint.manager(directory, None))
  saved = checkpoint.saved_structure(directory, step)  # a missing step or unreadable metadata: named
  abstract = jax.eval_shape(init, jax.random.key(0))
  for key in entry:
    saved = saved.get(key, {}) if isinstance(saved, dict) else {}
  stored = jax.eval_shape(lambda tree: blocks_like(tree, saved), abstract)
  target = checkpoint.abstract_like(nn.unbox(stored), parallel.logical_to_shardings(stored, mesh, rules))
  for key in reversed(entry):
    target = {key: target}
  params = checkpoint.restore_subtree(directory, target, step)
  for key in entry:
    params = params[key]
  if jax.tree.structure(stored) != jax.tree.structure(abstract):
    shardings = parallel.logical_to_shardings(abstract, mesh, rules)
    params = jax.jit(lambda tree: blocks_like(tree, nn.unbox(abstract)), out_shardings=shardings)(params)
  return params, f"workdir:{os.path.abspath(workdir)}@{step}"


def build_backbone(config) -> ViT:
  """The frozen DINOv2 ViT of `config.backbone`: the backbone of a dinojax run (`backbone.workdir`,
  its architecture from the run's config), a released architecture by hub name, or the one
  `backbone.model` describes."""
  b = config.backbone
  overrides = dict(attention=b.attention, dtype=platform.compute_dtype(b.dtype), remat=b.remat,
                   remat_policy=b.remat_policy, scan_blocks=b.scan_blocks)
  if b.workdir:
    return build_vit({**read_run_config(b.workdir)["model"], **overrides})
  if b.name:
    return hub.dinov2_model(b.name, **overrides)
  if not b.model:
    raise ValueError("Set backbone.name (e.g. 'vitl14_reg'), backbone.workdir (a dinojax SSL run) or "
                     "describe the ViT in backbone.model.")
  return build_vit({**b.model.to_dict(), **overrides})


def init_backbone(config, backbone: ViT, mesh, rules):
  """(params, source) of the frozen backbone of `config.backbone`, placed on the mesh: a dinojax
  run's (at `backbone.workdir_step`, 0: its latest checkpoint), a converted checkpoint, or random
  weights from the seed (said loudly: a random backbone only suits tests and the tiny run)."""
  b = config.backbone
  images = jnp.zeros((1, config.image_size, config.image_size, 3))
  init = lambda rng: backbone.init(rng, images)["params"]
  if b.workdir and b.checkpoint:
    raise ValueError("Set one of backbone.workdir and backbone.checkpoint, not both.")
  if b.workdir:
    key = RUN_BACKBONE[read_run_config(b.workdir)["job"]]
    return restore_from_run(b.workdir, init, entry=(key, "backbone"), mesh=mesh, rules=rules,
                            step=b.workdir_step)
  if b.checkpoint:
    state_dict = convert.to_official_naming(convert.load_state_dict(b.checkpoint))
    params = place(backbone, convert.state_dict_to_params(state_dict, backbone), images, mesh, rules)
    return params["params"], f"checkpoint:{b.checkpoint}"
  logging.warning("No backbone.checkpoint or backbone.workdir: the frozen backbone has RANDOM weights "
                  "(seed %d).", config.seed)
  params, _ = parallel.init_sharded(init, mesh, rules, jax.random.key(config.seed + 2))
  return params, f"random:{config.seed + 2}"
