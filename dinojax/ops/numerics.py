"""Small numerical helpers shared by models and losses."""

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(‖x‖, eps) along the last axis, as PyTorch's `F.normalize`."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def gelu(x: jax.Array) -> jax.Array:
  """The exact GELU x·Φ(x) in PyTorch's form, x/2·(1 + erf(x/√2)) (`nn.GELU()`). `jax.nn.gelu`'s
  x/2·erfc(-x/√2) is more accurate far in the negative tail, where both are ~0, but XLA's CPU erfc
  costs several times an erf (docs/benchmarks.md, open-vocabulary segmentation)."""
  return 0.5 * x * (1 + jax.lax.erf(x * 0.7071067811865476))
