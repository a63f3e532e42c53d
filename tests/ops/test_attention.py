import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinojax.ops import attention


def _qkv(t=261, heads=3, d=16, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  return [jax.random.normal(k, (2, t, heads, d), dtype) for k in keys]


def test_xla_matches_numpy_softmax_attention():
  q, k, v = _qkv()
  logits = np.einsum("bqhd,bkhd->bhqk", np.asarray(q), np.asarray(k)) / np.sqrt(q.shape[-1])
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ref = np.einsum("bhqk,bkhd->bqhd", p, np.asarray(v))
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, "xla"), ref, atol=1e-5)


def test_weights_are_probabilities():
  q, k, _ = _qkv(t=54)
  w = attention.attention_weights(q, k)
  assert w.shape == (2, 3, 54, 54)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_xla_matches_jax_nn_in_bf16():
  q, k, v = _qkv(dtype=jnp.bfloat16)
  ours = attention.dot_product_attention(q, k, v, "xla").astype(jnp.float32)
  ref = jax.nn.dot_product_attention(q, k, v, implementation="xla").astype(jnp.float32)
  np.testing.assert_allclose(ours, ref, atol=3e-2)


def test_unknown_implementation_is_clear():
  q, k, v = _qkv(t=8)
  with pytest.raises(ValueError, match="Unknown attention implementation 'flash'"):
    attention.dot_product_attention(q, k, v, "flash")
