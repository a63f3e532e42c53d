"""Talk2DINO (Barsellotti et al., "Talking to DINO", 2025): a small map ψ from CLIP's text space into
DINOv2's patch space, and the head-pooled visual embeddings it is trained against."""

import jax
import jax.numpy as jnp
import flax.linen as nn

from dinojax.models.vit import Linear

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, None: lambda x: x}


class TextToPatchProjection(nn.Module):
  """ψ(t) = W_b ∘ act ∘ W_a (t): a linear map into the DINOv2 width, then `hidden_layers` × (act,
  linear), as the official `ProjectionLayer.project_clip_txt`."""
  dino_dim: int = 768
  hidden_layers: int = 1
  act: str | None = "tanh"

  @nn.compact
  def __call__(self, text_embeddings: jax.Array) -> jax.Array:
    if self.act not in ACTIVATIONS:
      raise ValueError(f"Unknown activation {self.act!r}; choose one of {list(ACTIVATIONS)}.")
    x = Linear((self.dino_dim,), ("embed_text",), ("embed",), name="linear_layer")(
        text_embeddings.astype(jnp.float32))
    for i in range(self.hidden_layers):
      x = Linear((self.dino_dim,), ("embed",), (None,), name=f"hidden_layers_{i}")(ACTIVATIONS[self.act](x))
    return x


def head_pooled_embeddings(patch_tokens: jax.Array, attention: jax.Array,
                           num_global_tokens: int) -> jax.Array:
  """One visual embedding per attention head (B, heads, D): the patch tokens (B, N, D) averaged with
  the weights of the last block's CLS attention over the patches only (B, heads, T, T attention with
  T = num_global_tokens + N), renormalised, as Talk2DINO's "disentangled self-attention" tokens."""
  cls_to_patches = attention[:, :, 0, num_global_tokens:]
  weights = cls_to_patches / cls_to_patches.sum(axis=-1, keepdims=True)
  return jnp.einsum("bhn,bnd->bhd", weights, patch_tokens) / patch_tokens.shape[1]
