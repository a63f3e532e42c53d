"""Talk2DINO (Barsellotti et al., "Talking to DINO", 2025): a small map ψ from CLIP's text space into
DINOv2's patch space, and the head-pooled visual embeddings it is trained against."""

import jax
import jax.numpy as jnp
import flax.linen as nn

from dinojax.models.layers import Linear
from dinojax.ops.numerics import l2_normalize

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


def head_pooled_embeddings(patch_tokens: jax.Array, cls_logits: jax.Array,
                           num_global_tokens: int) -> jax.Array:
  """One visual embedding per attention head (B, heads, D): the patch tokens (B, N, D) averaged with
  the weights of the last block's CLS attention over the patches only, renormalised, as Talk2DINO's
  "disentangled self-attention" tokens. cls_logits (B, heads, T): the CLS query's row of attention
  logits over T = num_global_tokens + N tokens (`ViT(..., return_cls_attention=True)`); its softmax
  renormalised over the patches is the softmax over the patches alone."""
  weights = jax.nn.softmax(cls_logits[:, :, num_global_tokens:].astype(jnp.float32), axis=-1)
  return jnp.einsum("bhn,bnd->bhd", weights, patch_tokens) / patch_tokens.shape[1]


def patch_scores(patch_tokens: jax.Array, text_embeddings: jax.Array) -> jax.Array:
  """Soft masks (B, N, h, w): sigmoid of the cosine between every patch (B, h, w, D) and every
  class embedding ψ(text) (N, D), as the official masker (`DINOTextSim2Mask`, deterministic)."""
  cosine = jnp.einsum("bhwd,nd->bnhw", l2_normalize(patch_tokens.astype(jnp.float32)),
                      l2_normalize(text_embeddings.astype(jnp.float32)))
  return jax.nn.sigmoid(cosine)


def background_cleaning(masks: jax.Array, patch_tokens: jax.Array, cls_logits: jax.Array,
                        text_embeddings: jax.Array, lambda_bg: float = 0.2) -> jax.Array:
  """Talk2DINO's background cleaning: blend each class's soft mask (B, N, h, w) with an attention map
  built from the heads that class matches best.

  cls_logits (B, heads, h·w): the last block's CLS-to-patch scores before the softmax. Each head's
  embedding is the score-weighted mean of the patches; a softmax over heads of its cosine with the
  class gives the class's mix of head scores, softmaxed over patches, min-max rescaled per image
  into the masks' range, and added with weight `lambda_bg`.
  """
  b, n, h, w = masks.shape
  feats = patch_tokens.reshape(b, h * w, -1).astype(jnp.float32)
  heads = l2_normalize(jnp.einsum("bmp,bpd->bmd", cls_logits, feats) / (h * w))
  text = l2_normalize(text_embeddings.astype(jnp.float32))
  head_weights = jax.nn.softmax(jnp.einsum("nd,bmd->bnm", text, heads), axis=-1)
  per_class = jax.nn.softmax(jnp.einsum("bnm,bmp->bnp", head_weights, cls_logits), axis=-1)
  lo = per_class.min(axis=(1, 2), keepdims=True)
  hi = per_class.max(axis=(1, 2), keepdims=True)
  per_class = (per_class - lo) / jnp.maximum(hi, hi - lo)
  flat = masks.reshape(b, n, h * w)
  m_lo, m_hi = flat.min(axis=(1, 2), keepdims=True), flat.max(axis=(1, 2), keepdims=True)
  per_class = per_class * (m_hi - m_lo) + m_lo
  return ((flat + lambda_bg * per_class) / (1 + lambda_bg)).reshape(b, n, h, w)
