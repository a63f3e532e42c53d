"""The Mosaic TPU flash-attention kernels, run on CPU in TPU interpret mode, against the XLA reference;
and both kernel sets lowered for the platforms they are written for (TPU, and CUDA for the portable
kernels), which checks the Pallas-level lowering without the hardware."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinojax.ops import attention
from dinojax.ops.flash_attention import flash_attention
from dinojax.ops.flash_attention_tpu import flash_attention_tpu

reference = partial(attention.dot_product_attention, implementation="xla")


def _inputs(b, t, h, d, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  return [jax.random.normal(k, (b, t, h, d), jnp.float32).astype(dtype) for k in keys]


def _grads(fn, q, k, v, do):
  return jax.vjp(fn, q, k, v)[1](do)


@pytest.mark.parametrize("b,t,h,d,block", [(1, 54, 2, 64, 128), (1, 261, 2, 64, 128),
                                           (1, 1374, 1, 64, 512), (1, 70, 1, 128, 128)])
def test_forward_and_gradients_match_reference_fp32(b, t, h, d, block):
  q, k, v, do = _inputs(b, t, h, d)
  kernel = partial(flash_attention_tpu, block=block)
  np.testing.assert_allclose(kernel(q, k, v), reference(q, k, v), rtol=1e-5, atol=2e-6)
  for got, want in zip(_grads(kernel, q, k, v, do), _grads(reference, q, k, v, do)):
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(got / scale, want / scale, atol=1e-5)


def test_bf16_within_the_references_own_bf16_error():
  q, k, v, do = _inputs(1, 261, 2, 64, jnp.bfloat16)
  exact = [x.astype(jnp.float32) for x in (q, k, v, do)]
  for ours, xla_bf16, want in [
      ((flash_attention_tpu(q, k, v),), (reference(q, k, v),), (reference(*exact[:3]),)),
      (_grads(flash_attention_tpu, q, k, v, do), _grads(reference, q, k, v, do),
       _grads(reference, *exact))]:
    for got, bf16, f32 in zip(ours, xla_bf16, want):
      own_error = float(jnp.abs(bf16.astype(jnp.float32) - f32).max())
      assert float(jnp.abs(got.astype(jnp.float32) - f32).max()) <= 2 * own_error + 1e-3


def test_block_must_fill_tpu_lanes():
  q = jnp.zeros((1, 54, 1, 64))
  with pytest.raises(ValueError, match="multiple of 128"):
    flash_attention_tpu(q, q, q, block=64)


def _lower_fwd_bwd(kernel, platform, t, d, dtype=jnp.bfloat16):
  x = jax.ShapeDtypeStruct((2, t, 4, d), dtype)
  loss = lambda q, k, v: kernel(q, k, v).astype(jnp.float32).sum()
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  return grad.trace(x, x, x).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("t,d", [(54, 64), (261, 64), (1374, 64), (261, 128)])
def test_tpu_kernels_lower_for_tpu(t, d):
  hlo = _lower_fwd_bwd(partial(flash_attention_tpu, interpret=False), "tpu", t, d)
  assert hlo.count("tpu_custom_call") == 3  # forward, dK/dV, dQ


@pytest.mark.parametrize("t,d", [(54, 64), (261, 64), (1374, 64), (261, 128)])
def test_portable_kernels_lower_for_cuda_through_triton(t, d):
  hlo = _lower_fwd_bwd(partial(flash_attention, interpret=False), "cuda", t, d)
  assert hlo.count("__gpu$xla.gpu.triton") == 3
