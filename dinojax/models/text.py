"""Causal text transformers: CLIP's text tower (Radford et al., 2021; also Talk2DINO's text side) and
dino.txt's (Jose et al., "DINOv2 Meets Text", 2025, §3, trained from scratch). Both embed tokens and
positions, run causal pre-LN blocks, take a final LayerNorm, pool one vector per caption and project it
linearly (no bias) into the joint space; they differ only in options:

- `activation`: CLIP's QuickGELU or dino.txt's exact GELU;
- `qkv_bias`: CLIP's biased q, k, v projections or dino.txt's bias-free ones;
- `pooling`: CLIP's "argmax" (the row's highest id, its end-of-text token) or dino.txt's "eot" (the
  first `eot_id`), "last" or "mean" (over non-padding tokens);
- `embed_dim`: None keeps the pooled width (no projection).

Captions are right-padded. Attention is causal, so a real token never sees the padding after it, and
pooling reads real tokens only: the embedding does not depend on the padded length.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinojax.models.layers import Linear, layer_norm, with_axes
from dinojax.ops import attention as attention_ops
from dinojax.ops.numerics import gelu

LAYER_NORM_EPS = 1e-5
POOLINGS = ("argmax", "eot", "last", "mean")

# OpenAI CLIP's text towers: its BPE vocabulary (end-of-text is the last id), 77 positions.
CLIP = dict(vocab_size=49408, context_length=77, pooling="argmax", activation="quick_gelu", qkv_bias=True)
CLIP_VARIANTS = {"ViT-B/16": dict(CLIP, width=512, depth=12, num_heads=8, embed_dim=512),
                 "ViT-L/14": dict(CLIP, width=768, depth=12, num_heads=12, embed_dim=768)}


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu}


def _layer_norm(name, dtype):
  return layer_norm(name, dtype, eps=LAYER_NORM_EPS)


class TextBlock(nn.Module):
  """Causal pre-LN block: attention, then a 4×-wide MLP with `activation`."""
  num_heads: int
  attention: str = "xla"
  dtype: Any = jnp.float32
  activation: str = "gelu"
  qkv_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads
    y = _layer_norm("layer_norm1", self.dtype)(x)
    q, k, v = (Linear((self.num_heads, head_dim), ("embed",), ("heads", "kv"), use_bias=self.qkv_bias,
                      dtype=self.dtype, name=f"{n}_proj")(y) for n in "qkv")
    y = attention_ops.dot_product_attention(q, k, v, attention=self.attention, causal=True)
    x = x + Linear((width,), ("heads", "kv"), ("embed",), dtype=self.dtype, name="out_proj")(y)
    y = _layer_norm("layer_norm2", self.dtype)(x)
    y = ACTIVATIONS[self.activation](Linear((4 * width,), ("embed",), ("mlp",), dtype=self.dtype,
                                            name="fc1")(y))
    return x + Linear((width,), ("mlp",), ("embed",), dtype=self.dtype, name="fc2")(y)


def pool_tokens(x: jax.Array, token_ids: jax.Array, pooling: str, eot_id: int, pad_id: int) -> jax.Array:
  """(B, T, D) hidden states -> (B, D).

  "argmax": the token with the row's highest id (CLIP's; its end-of-text is the last vocabulary
  entry); "eot": the first `eot_id` token (the same when EOT is the largest id, as in the released
  dino.txt text encoder); "last": the last non-padding token; "mean": the average over non-padding
  tokens.
  """
  real = token_ids != pad_id
  rows = jnp.arange(x.shape[0])
  if pooling == "argmax":
    return x[rows, jnp.argmax(token_ids, axis=-1)]
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
  """Token ids (B, T ≤ context_length) -> {"last_hidden_state", "pooled" (fp32), "text_embeds"}.

  The defaults are dino.txt's tower (the released one projects its 1280-d output to the 2048-d joint
  space); `CLIP_VARIANTS` hold CLIP's. Params: `token_embedding`, `position_embedding`, `blocks_<i>`,
  `ln_final` and, with `embed_dim`, `projection` (width, embed_dim).
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
    x = _layer_norm("ln_final", self.dtype)(x)
    pooled = pool_tokens(x, token_ids, self.pooling, self.eot_id, self.pad_id).astype(jnp.float32)
    embeds = pooled
    if self.embed_dim is not None:
      projection = self.param("projection", with_axes(nn.initializers.normal(self.width ** -0.5),
                                                      "embed", None), (self.width, self.embed_dim))
      embeds = pooled @ projection
    return {"last_hidden_state": x, "pooled": pooled, "text_embeds": embeds}
