"""The Pallas flash-attention kernels against the XLA reference, run on CPU in their interpreters:
the portable kernels (Pallas interpret mode), the Mosaic TPU kernels (TPU interpret mode) and the
Mosaic GPU kernels (Mosaic GPU's interpreter); and each lowered for the hardware it is written for
(Triton and Mosaic GPU for CUDA, Mosaic for TPU), which checks the Pallas-level lowering without
the hardware."""

from functools import partial
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinojax import parallel
from dinojax.models.vit import ViT
from dinojax.ops import attention
from dinojax.ops.flash_attention import flash_attention
from dinojax.ops.flash_attention_gpu import flash_attention_gpu
from dinojax.ops.flash_attention_tpu import flash_attention_tpu

reference = partial(attention.dot_product_attention, attention="xla")


def _inputs(b, t, h, d, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  return [jax.random.normal(k, (b, t, h, d), jnp.float32).astype(dtype) for k in keys]


def _grads(fn, q, k, v, do):
  return jax.vjp(fn, q, k, v)[1](do)


# DINOv2's lengths: 54 (96 px local crop, 4 registers), 261 (224 px global crop), 1374 (518 px).
@pytest.mark.slow
@pytest.mark.parametrize("kernel,b,t,h,d", [
    (flash_attention, 2, 54, 3, 64), (flash_attention, 2, 261, 2, 64),
    (flash_attention, 1, 1374, 1, 64), (flash_attention, 1, 70, 2, 128),
    (flash_attention_tpu, 1, 54, 1, 64), (flash_attention_tpu, 1, 261, 1, 64),
    (partial(flash_attention_tpu, block=512), 1, 1374, 1, 64), (flash_attention_tpu, 1, 70, 1, 128),
], ids=["portable-54", "portable-261", "portable-1374", "portable-d128",
        "tpu-54", "tpu-261", "tpu-1374", "tpu-d128"])
def test_forward_and_gradients_match_reference_fp32(kernel, b, t, h, d):
  q, k, v, do = _inputs(b, t, h, d)
  np.testing.assert_allclose(kernel(q, k, v), reference(q, k, v), rtol=1e-5, atol=2e-6)
  for got, want in zip(_grads(kernel, q, k, v, do), _grads(reference, q, k, v, do)):
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(got / scale, want / scale, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kernel,t,d", [
    (flash_attention, 261, 64), (flash_attention_tpu, 261, 64),
    (flash_attention_gpu, 54, 64), (flash_attention_gpu, 130, 64), (flash_attention_gpu, 70, 128),
], ids=["portable", "tpu", "gpu-54", "gpu-130", "gpu-d128"])
def test_bf16_within_the_references_own_bf16_error(kernel, t, d):
  q, k, v, do = _inputs(1, t, 1, d, jnp.bfloat16)
  exact = [x.astype(jnp.float32) for x in (q, k, v, do)]
  cases = [((kernel(q, k, v),), (reference(q, k, v),), (reference(*exact[:3]),)),
           (_grads(kernel, q, k, v, do), _grads(reference, q, k, v, do), _grads(reference, *exact))]
  for ours, xla_bf16, want in cases:
    for got, bf16, f32 in zip(ours, xla_bf16, want):
      own_error = float(jnp.abs(bf16.astype(jnp.float32) - f32).max())
      assert float(jnp.abs(got.astype(jnp.float32) - f32).max()) <= 2 * own_error + 1e-3


def test_padded_keys_get_no_weight():
  # Keys beyond the true length would change the result if they leaked into the softmax.
  q, k, v, _ = _inputs(1, 70, 1, 64)
  short = flash_attention(q, k, v, block=64)  # padded to 128
  np.testing.assert_allclose(short, reference(q, k, v), rtol=1e-5, atol=2e-6)


def test_sharded_over_8_devices_matches_one_device():
  mesh = parallel.make_mesh({"data": 2, "model": 4})
  q, k, v, do = _inputs(4, 54, 4, 64)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None, "model", None))
  placed = [jax.device_put(x, sharding) for x in (q, k, v, do)]
  pallas = partial(attention.dot_product_attention, attention="pallas")
  with parallel.activation_sharding(mesh):
    out = jax.jit(pallas)(*placed[:3])
    grads = jax.jit(lambda *a: _grads(pallas, *a))(*placed)
  np.testing.assert_allclose(out, reference(q, k, v), rtol=1e-5, atol=2e-6)
  for got, want in zip(grads, _grads(reference, q, k, v, do)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_vit_with_pallas_attention_equals_xla():
  kwargs = dict(embed_dim=64, depth=2, num_heads=4, patch_size=14, img_size=56, num_register_tokens=4)
  x = jax.random.normal(jax.random.key(1), (2, 56, 42, 3))
  params = nn.unbox(ViT(**kwargs).init(jax.random.key(0), x))
  ref = ViT(**kwargs).apply(params, x)["x_norm_patchtokens"]
  out = ViT(**kwargs, attention="pallas").apply(params, x)["x_norm_patchtokens"]
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_pallas_on_cpu_runs_the_portable_kernels():
  assert attention.pallas_kernel(jnp.zeros((1, 54, 1, 64), jnp.bfloat16)) is flash_attention


def test_inputs_the_kernels_cannot_take_are_named():
  x = jnp.zeros((1, 54, 1, 64))
  with pytest.raises(ValueError, match="multiple of 128"):
    flash_attention_tpu(x, x, x, block=64)
  with pytest.raises(ValueError, match="bf16 or fp16"):
    flash_attention_gpu(x, x, x)
  y = jnp.zeros((1, 54, 1, 32), jnp.bfloat16)
  with pytest.raises(ValueError, match="multiple of 64"):
    flash_attention_gpu(y, y, y)


@pytest.mark.parametrize("kernel,platform,target", [
    (flash_attention, "cuda", "__gpu$xla.gpu.triton"), (flash_attention_gpu, "cuda", "mosaic_gpu_v2"),
    (flash_attention_tpu, "tpu", "tpu_custom_call")], ids=["triton", "mosaic-gpu", "mosaic-tpu"])
@pytest.mark.parametrize("t,d", [(54, 64), (261, 64), (1374, 64), (261, 128)])
def test_kernels_lower_for_their_hardware(kernel, platform, target, t, d):
  x = jax.ShapeDtypeStruct((2, t, 4, d), jnp.bfloat16)
  loss = lambda q, k, v: partial(kernel, interpret=False)(q, k, v).astype(jnp.float32).sum()
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  hlo = grad.trace(x, x, x).lower(lowering_platforms=(platform,)).as_text()
  assert re.findall(r"custom_call @(\S+)\(", hlo) == [target] * 3  # forward, dK/dV, dQ
