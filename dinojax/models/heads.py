"""Projection heads of DINOv2 pretraining (the official `DINOHead`), used for DINO and iBOT."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinojax.models.layers import Linear, with_axes
from dinojax.ops.numerics import gelu, l2_normalize


class DINOHead(nn.Module):
  """MLP (`nlayers` Linear layers, GELU between) to a `bottleneck_dim` vector, L2-normalised, then a
  weight-normalised linear layer to `out_dim` prototypes: W = g · v / ‖v‖ per prototype, g from 1."""
  out_dim: int = 65536
  nlayers: int = 3
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  mlp_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    nlayers = max(self.nlayers, 1)
    widths = [self.hidden_dim] * (nlayers - 1) + [self.bottleneck_dim]
    # "embed" (FSDP's axis) on every kernel's non-"mlp" side, so FSDP shards the heads as well.
    names = [("embed", "mlp")] * (nlayers - 1) + [("mlp", "embed")]
    if nlayers == 1:
      names = [("embed", None)]
    for i, (width, (n_in, n_out)) in enumerate(zip(widths, names)):
      x = Linear((width,), (n_in,), (n_out,), self.mlp_bias, self.dtype, self.param_dtype,
                 name=f"mlp_{i}")(x)
      if i < nlayers - 1:
        x = gelu(x)
    x = x.astype(jnp.float32)
    x = l2_normalize(x)
    # PyTorch's default Linear init for v (the official head re-initialises only the MLP).
    v = self.param("last_layer_v", with_axes(nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                                         "embed", "vocab"),
                   (self.bottleneck_dim, self.out_dim), self.param_dtype)
    g = self.param("last_layer_g", with_axes(nn.initializers.ones, "vocab"), (self.out_dim,),
                   self.param_dtype)
    w = v * (g / jnp.linalg.norm(v, axis=0))
    return jnp.dot(x.astype(self.dtype), w.astype(self.dtype))
