"""The one place attention is computed; every model calls `dot_product_attention`.

Implementations, chosen by name (a config value):
  "xla"    the reference: einsum, fp32 softmax, einsum. Runs everywhere; the only one that can also
           return the attention weights.
  "cudnn"  `jax.nn.dot_product_attention` with the cuDNN fused kernel (GPU only).
  "pallas" our Pallas flash-attention kernels (GPU and TPU).
"""

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn", "pallas")


def attention_weights(q: jax.Array, k: jax.Array) -> jax.Array:
  """Softmax attention probabilities (B, heads, Tq, Tk) for q, k of shape (B, T, heads, head_dim)."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k, preferred_element_type=jnp.float32)
  return jax.nn.softmax(logits, axis=-1)


def _xla(q, k, v):
  probs = attention_weights(q, k).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def _cudnn(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")


def _pallas(q, k, v):
  raise NotImplementedError(
      "attention='pallas' needs the Pallas flash-attention kernels, which are not in this build yet; "
      "use attention='xla' or attention='cudnn'.")


_DISPATCH = {"xla": _xla, "cudnn": _cudnn, "pallas": _pallas}


def check_implementation(implementation: str) -> None:
  if implementation not in _DISPATCH:
    raise ValueError(
        f"Unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}.")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          implementation: str = "xla") -> jax.Array:
  """Non-causal multi-head attention over (B, T, heads, head_dim) inputs, same layout out."""
  check_implementation(implementation)
  return _DISPATCH[implementation](q, k, v)
