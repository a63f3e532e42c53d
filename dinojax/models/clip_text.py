"""CLIP's text transformer (Radford et al., 2021), the text side of Talk2DINO: causal pre-LN blocks
with QuickGELU, the final LayerNorm's output at the end-of-text token, projected to the joint space."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinojax.models.vit import Linear, layer_norm, with_axes
from dinojax.ops import attention as attention_ops
from dinojax.ops.numerics import gelu

LAYER_NORM_EPS = 1e-5

# OpenAI CLIP text towers: (width, layers, heads, projection).
VARIANTS = {"ViT-B/16": dict(width=512, depth=12, num_heads=8, embed_dim=512),
            "ViT-L/14": dict(width=768, depth=12, num_heads=12, embed_dim=768)}


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


def _layer_norm(name, dtype):
  return layer_norm(name, dtype, eps=LAYER_NORM_EPS)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu}


class TextBlock(nn.Module):
  """Causal pre-LN block; `activation` is CLIP's QuickGELU or the exact GELU of dino.txt's tower,
  `qkv_bias` CLIP's biased q, k, v projections or dino.txt's bias-free ones."""
  num_heads: int
  attention: str = "xla"
  dtype: Any = jnp.float32
  activation: str = "quick_gelu"
  qkv_bias: bool = True

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


class CLIPTextEncoder(nn.Module):
  """Token ids (B, T ≤ context) -> {"last_hidden_state", "pooled", "text_embeds"}. The pooled token is
  the end-of-text one: the highest id in each row (OpenAI's convention; EOT is the last vocab entry)."""
  vocab_size: int = 49408
  context_length: int = 77
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  embed_dim: int = 512
  attention: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> dict[str, jax.Array]:
    if input_ids.shape[-1] > self.context_length:
      raise ValueError(f"Token sequence of length {input_ids.shape[-1]} exceeds the context length "
                       f"{self.context_length}.")
    tokens = self.param("token_embedding", with_axes(nn.initializers.normal(0.02), "vocab", "embed"),
                        (self.vocab_size, self.width))
    positions = self.param("position_embedding", with_axes(nn.initializers.normal(0.01), None, "embed"),
                           (self.context_length, self.width))
    x = (tokens[input_ids] + positions[:input_ids.shape[-1]]).astype(self.dtype)
    for i in range(self.depth):
      x = TextBlock(self.num_heads, attention=self.attention, dtype=self.dtype, name=f"layers_{i}")(x)
    x = _layer_norm("final_layer_norm", self.dtype)(x)
    pooled = x[jnp.arange(x.shape[0]), input_ids.argmax(axis=-1)]
    projection = self.param("text_projection", with_axes(nn.initializers.normal(self.width ** -0.5),
                                                         "embed", None), (self.width, self.embed_dim))
    return {"last_hidden_state": x, "pooled": pooled,
            "text_embeds": pooled.astype(jnp.float32) @ projection}
