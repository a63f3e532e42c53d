"""dino.txt's text tower (Jose et al., "DINOv2 Meets Text", 2025, §3): a causal transformer trained from
scratch, pooled at the end-of-text token (or averaged over the caption's tokens), linearly projected
into the joint space. The blocks are CLIP's (`clip_text.TextBlock`) with the exact GELU.

Captions are right-padded with `pad_id`. Attention is causal, so a real token never sees the padding
after it; pooling reads real tokens only; hence the embedding does not depend on the padded length.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinojax.models.clip_text import LAYER_NORM_EPS, TextBlock
from dinojax.models.vit import layer_norm, with_axes

POOLINGS = ("eot", "last", "mean")


def pool_tokens(x: jax.Array, token_ids: jax.Array, pooling: str, eot_id: int, pad_id: int) -> jax.Array:
  """(B, T, D) hidden states -> (B, D).

  "eot": the first end-of-text token (CLIP's `argmax` pooling when EOT is the largest id, as in the
  released dino.txt text encoder); "last": the last non-padding token; "mean": the average over
  non-padding tokens.
  """
  real = token_ids != pad_id
  rows = jnp.arange(x.shape[0])
  if pooling == "eot":
    return x[rows, jnp.argmax(token_ids == eot_id, axis=-1)]
  if pooling == "last":
    positions = jnp.arange(token_ids.shape[-1])
    return x[rows, jnp.max(jnp.where(real, positions, 0), axis=-1)]
  if pooling == "mean":
    weights = real.astype(x.dtype)[..., None]
    return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)
  raise ValueError(f"Unknown text pooling {pooling!r}; choose one of {POOLINGS}.")


class TextTransformer(nn.Module):
  """Token ids (B, T ≤ context_length) -> {"last_hidden_state", "pooled", "text_embeds"}.

  `embed_dim` None keeps the pooled width (no projection); the released dino.txt tower projects its
  1280-d output to the 2048-d joint space with a bias-free linear layer. Its attention has no q/k/v
  bias (`qkv_bias=False`, the default; CLIP's has one).
  """
  vocab_size: int
  context_length: int = 77
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  embed_dim: int | None = None
  pooling: str = "eot"
  eot_id: int = 3
  pad_id: int = 0
  activation: str = "gelu"
  qkv_bias: bool = False
  attention: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, token_ids: jax.Array) -> dict[str, jax.Array]:
    if self.pooling not in POOLINGS:
      raise ValueError(f"Unknown text pooling {self.pooling!r}; choose one of {POOLINGS}.")
    if token_ids.ndim != 2:
      raise ValueError(f"Expected token ids of shape (batch, length), got {token_ids.shape}.")
    if token_ids.shape[-1] > self.context_length:
      raise ValueError(f"Token sequence of length {token_ids.shape[-1]} exceeds the context length "
                       f"{self.context_length}.")
    tokens = self.param("token_embedding", with_axes(nn.initializers.normal(0.02), "vocab", "embed"),
                        (self.vocab_size, self.width))
    positions = self.param("position_embedding", with_axes(nn.initializers.normal(0.01), None, "embed"),
                           (self.context_length, self.width))
    x = (tokens[token_ids] + positions[:token_ids.shape[-1]]).astype(self.dtype)
    for i in range(self.depth):
      x = TextBlock(self.num_heads, attention=self.attention, dtype=self.dtype, activation=self.activation,
                    qkv_bias=self.qkv_bias, name=f"blocks_{i}")(x)
    x = layer_norm("ln_final", self.dtype, eps=LAYER_NORM_EPS)(x)
    pooled = pool_tokens(x, token_ids, self.pooling, self.eot_id, self.pad_id).astype(jnp.float32)
    embeds = pooled
    if self.embed_dim is not None:
      projection = self.param("projection", with_axes(nn.initializers.normal(self.width ** -0.5),
                                                      "embed", None), (self.width, self.embed_dim))
      embeds = pooled @ projection
    return {"last_hidden_state": x, "pooled": pooled, "text_embeds": embeds}
