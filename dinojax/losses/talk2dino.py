"""Talk2DINO's training objective (Barsellotti et al., 2025, §3): max-over-heads similarity and a
symmetric InfoNCE over the global batch."""

import jax
import jax.numpy as jnp

from dinojax.ops.numerics import l2_normalize


def head_pooled_similarity(text: jax.Array, heads: jax.Array) -> jax.Array:
  """(texts, images) cosine similarities, each image represented by the head its own caption matches
  best: text (B, D) = ψ(CLIP text), heads (B, H, D); pair i picks argmax_h cos(text_i, heads_ih)
  (the official "max_score" alignment), and every text is then scored against those picks."""
  text, heads = l2_normalize(text.astype(jnp.float32)), l2_normalize(heads.astype(jnp.float32))
  own = jnp.einsum("bd,bhd->bh", text, heads)
  best = jnp.take_along_axis(heads, own.argmax(axis=-1)[:, None, None], axis=1)[:, 0]
  return text @ best.T


def infonce_loss(similarity: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """Symmetric InfoNCE on a (B, B) similarity matrix with exp(logit_scale) as inverse temperature,
  divided by B² as the official `Contrastive.compute_contrastive_loss` does."""
  logits = jnp.exp(logit_scale) * similarity.astype(jnp.float32)
  b = logits.shape[0]
  diagonal = jnp.arange(b)
  rows = -jax.nn.log_softmax(logits, axis=1)[diagonal, diagonal].mean()
  cols = -jax.nn.log_softmax(logits, axis=0)[diagonal, diagonal].mean()
  return (rows + cols) / 2 / b ** 2
