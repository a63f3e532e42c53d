"""DINOv2's optimisation recipe: AdamW with scheduled lr / weight decay, per-parameter lr
multipliers (layer-wise decay, patch-embed ×0.2), decay exemptions, a frozen last layer at the
start, and gradient clipping per module (`dinov2/train/train.py`, `dinov2/utils/param_groups.py`)."""

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

# Parameters whose path contains one of these get no weight decay (official: biases, norms, LayerScale).
NO_WEIGHT_DECAY = ("bias", "norm", "gamma")
# Backbone params that sit "below" block 0 for layer-wise decay.
_EMBEDDING_PARAMS = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")


def cosine_schedule(step: jax.Array, base: float, final: float, total_steps: int,
                    warmup_steps: int = 0, warmup_start: float = 0.0, freeze_steps: int = 0) -> jax.Array:
  """The official `CosineScheduler`: 0 while frozen, linear warmup (endpoint included), then cosine
  from `base` to `final`; `final` from `total_steps` on."""
  step = jnp.asarray(step, jnp.float32)
  cosine_steps = max(total_steps - warmup_steps - freeze_steps, 1)
  t = step - freeze_steps - warmup_steps
  cosine = final + 0.5 * (base - final) * (1 + jnp.cos(jnp.pi * t / cosine_steps))
  warm = warmup_start + (base - warmup_start) * (step - freeze_steps) / max(warmup_steps - 1, 1)
  value = jnp.where(step < freeze_steps + warmup_steps, warm, cosine)
  value = jnp.where(step < freeze_steps, 0.0, value)
  return jnp.where(step >= total_steps, final, value)


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def lr_multipliers(params: Any, num_blocks: int, layerwise_decay: float,
                   patch_embed_lr_mult: float, backbone_key: str = "backbone") -> Any:
  """Per-param lr multipliers: backbone block i gets decay^(L - i), embeddings decay^(L + 1),
  everything else (final norm, heads) 1; patch embedding additionally × `patch_embed_lr_mult`.
  Scanned blocks (one `blocks` entry stacked on a leading axis) get an array of the L blocks'
  multipliers, shaped to broadcast against their stacked param."""

  def multiplier(path, param):
    name = _path_name(path)
    mult = 1.0
    if name.startswith(backbone_key + "/"):
      local = name[len(backbone_key) + 1:]
      if local.split("/")[0] in _EMBEDDING_PARAMS:
        mult = layerwise_decay ** (num_blocks + 1)
      elif m := re.match(r"blocks_(\d+)/", local):
        mult = layerwise_decay ** (num_blocks - int(m.group(1)))
      elif local.startswith("blocks/"):
        per_block = layerwise_decay ** (num_blocks - np.arange(num_blocks, dtype=np.float32))
        mult = per_block.reshape(-1, *[1] * (len(param.shape) - 1))
    if "patch_embed" in name:
      mult *= patch_embed_lr_mult
    return mult

  return jax.tree_util.tree_map_with_path(multiplier, params)


def wd_multipliers(params: Any, exempt: Sequence[str] = NO_WEIGHT_DECAY) -> Any:
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 0.0 if any(e in _path_name(path) for e in exempt) else 1.0, params)


def last_layer_mask(params: Any) -> Any:
  """True for the heads' weight-normalised last layers (their lr is frozen at the start)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: "last_layer" in _path_name(path), params)


def adamw(lr: jax.Array, weight_decay: jax.Array, last_layer_lr: jax.Array, lr_mult: Any,
          wd_mult: Any, is_last_layer: Any, b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
  """AdamW as PyTorch applies it per param group: p -= lr·m_lr·(adam + wd·m_wd·p), with the last
  layer's lr taken from its own schedule. Rebuilt each step with that step's scalars; its state
  (Adam moments) does not depend on them, so `init` can use any values."""

  def scale(updates, params):
    return jax.tree.map(
        lambda u, p, m_lr, m_wd, last: -jnp.where(last, last_layer_lr, lr) * m_lr *
        (u + weight_decay * m_wd * p), updates, params, lr_mult, wd_mult, is_last_layer)

  return optax.chain(optax.scale_by_adam(b1, b2, eps=1e-8), optax.stateless(scale))


def sharded_init(tx: optax.GradientTransformation, params: Any, param_shardings: Any) -> Any:
  """`tx.init(params)` with every param-shaped part (Adam's moments) sharded as its parameter and the
  rest (step counts) replicated. Under `jax.jit` alone the zeros optax makes come out replicated, so
  FSDP would keep a full copy of the moments on every device."""
  state = tx.init(params)
  mesh = jax.tree.leaves(param_shardings)[0].mesh
  shardings = optax.tree_map_params(tx, lambda _, sharding: sharding, state, param_shardings,
                                    transform_non_params=lambda _: NamedSharding(mesh, P()))
  return jax.lax.with_sharding_constraint(state, shardings)


def clip_by_module_norm(grads: dict, max_norm: float) -> tuple[dict, dict]:
  """Clips each top-level module's gradient (backbone, each head) to `max_norm` separately, as the
  official trainer does; returns (clipped grads, each module's norm before clipping)."""
  norms = {k: optax.tree.norm(g) for k, g in grads.items()}
  clipped = {k: jax.tree.map(lambda x: x * jnp.minimum(1.0, max_norm / (norms[k] + 1e-6)), g)
             for k, g in grads.items()}
  return clipped, norms
