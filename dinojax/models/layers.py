"""The generic layers every model is built from: params that carry logical axis names (`with_axes`,
mapped to mesh axes by `dinojax.parallel`), the official dense init, a LayerNorm and a Linear whose
kernels shard by those names."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def with_axes(init: Callable, *names: str | None) -> Callable:
  """`init` whose params carry the logical axis `names` (mapped to mesh axes by `parallel`)."""
  return nn.with_logical_partitioning(init, names)


# The official `trunc_normal_(std=0.02)` keeps PyTorch's absolute bounds ±2, i.e. ±100σ: in effect
# N(0, 0.02²). (Flax's `truncated_normal(0.02)` cuts at ±2σ, a standard deviation of 0.0176.)
dense_init = nn.initializers.normal(0.02)


def layer_norm(name: str, dtype: Any, param_dtype: Any = jnp.float32,
               *, eps: float) -> nn.LayerNorm:
  """LayerNorm whose scale and bias carry the (replicated) `norm` axis."""
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=with_axes(nn.initializers.ones, "norm"), bias_init=with_axes(nn.initializers.zeros, "norm"))


class Linear(nn.Module):
  """x @ kernel contracting x's last `len(in_axes)` dims; the kernel is (*inputs, *features) with
  logical names `in_axes + out_axes`. (Our own rather than `nn.DenseGeneral`, whose flattened init
  cannot carry per-dimension logical names.)"""
  features: tuple[int, ...]
  in_axes: tuple[str | None, ...]
  out_axes: tuple[str | None, ...]
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    contract = len(self.in_axes)
    kernel = self.param("kernel", with_axes(dense_init, *self.in_axes, *self.out_axes),
                        (*x.shape[-contract:], *self.features), self.param_dtype)
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=contract)
    if self.use_bias:
      bias = self.param("bias", with_axes(nn.initializers.zeros, *self.out_axes), self.features,
                        self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y
