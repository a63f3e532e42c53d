"""Pallas flash attention (interpret mode on CPU) against the XLA reference."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinojax import parallel
from dinojax.models.vit import ViT
from dinojax.ops import attention
from dinojax.ops.flash_attention import flash_attention


def _inputs(b, t, h, d, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  return [jax.random.normal(k, (b, t, h, d), jnp.float32).astype(dtype) for k in keys]


def _grads(fn, q, k, v, do):
  return jax.vjp(fn, q, k, v)[1](do)


@pytest.mark.parametrize("b,t,h,d", [(2, 54, 3, 64), (2, 261, 2, 64), (1, 1374, 1, 64), (1, 70, 2, 128)])
def test_forward_and_gradients_match_reference_fp32(b, t, h, d):
  q, k, v, do = _inputs(b, t, h, d)
  ref = partial(attention.dot_product_attention, implementation="xla")
  np.testing.assert_allclose(flash_attention(q, k, v), ref(q, k, v), rtol=1e-5, atol=2e-6)
  for got, want in zip(_grads(flash_attention, q, k, v, do), _grads(ref, q, k, v, do)):
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(got / scale, want / scale, atol=1e-5)


def test_bf16_within_the_references_own_bf16_error():
  q, k, v, _ = _inputs(2, 261, 2, 64, jnp.bfloat16)
  exact = attention.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)), "xla")
  ours = flash_attention(q, k, v).astype(jnp.float32)
  xla_bf16 = attention.dot_product_attention(q, k, v, "xla").astype(jnp.float32)
  assert float(jnp.abs(ours - exact).max()) <= 2 * float(jnp.abs(xla_bf16 - exact).max()) + 1e-3


def test_padded_keys_get_no_weight():
  # Keys beyond the true length would change the result if they leaked into the softmax.
  q, k, v, _ = _inputs(1, 70, 1, 64)
  short = flash_attention(q, k, v, block=64)  # padded to 128
  np.testing.assert_allclose(short, attention.dot_product_attention(q, k, v, "xla"), rtol=1e-5, atol=2e-6)


def test_sharded_over_8_devices_matches_one_device():
  mesh = parallel.make_mesh({"data": 2, "model": 4})
  q, k, v, do = _inputs(4, 54, 4, 64)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None, "model", None))
  placed = [jax.device_put(x, sharding) for x in (q, k, v, do)]
  pallas = partial(attention.dot_product_attention, implementation="pallas")
  with parallel.activation_sharding(mesh):
    out = jax.jit(pallas)(*placed[:3])
    grads = jax.jit(lambda *a: _grads(pallas, *a))(*placed)
  np.testing.assert_allclose(out, attention.dot_product_attention(q, k, v, "xla"), rtol=1e-5, atol=2e-6)
  ref = _grads(partial(attention.dot_product_attention, implementation="xla"), q, k, v, do)
  for got, want in zip(grads, ref):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_vit_with_pallas_attention_equals_xla():
  kwargs = dict(embed_dim=64, depth=2, num_heads=4, patch_size=14, img_size=56, num_register_tokens=4)
  x = jax.random.normal(jax.random.key(1), (2, 56, 42, 3))
  params = nn.unbox(ViT(**kwargs).init(jax.random.key(0), x))
  ref = ViT(**kwargs).apply(params, x)["x_norm_patchtokens"]
  out = ViT(**kwargs, attention="pallas").apply(params, x)["x_norm_patchtokens"]
  np.testing.assert_allclose(out, ref, atol=1e-5)
