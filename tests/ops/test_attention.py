import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinojax.ops import attention, platform
from dinojax.ops.flash_attention import flash_attention
from dinojax.ops.flash_attention_tpu import flash_attention_tpu


def _qkv(t=261, heads=3, d=16, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  return [jax.random.normal(k, (2, t, heads, d), dtype) for k in keys]


def test_xla_matches_numpy_softmax_attention():
  q, k, v = _qkv()
  logits = np.einsum("bqhd,bkhd->bhqk", np.asarray(q), np.asarray(k)) / np.sqrt(q.shape[-1])
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ref = np.einsum("bhqk,bkhd->bqhd", p, np.asarray(v))
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, attention="xla"), ref, atol=1e-5)


def test_weights_are_probabilities():
  q, k, _ = _qkv(t=54)
  w = attention.attention_weights(q, k)
  assert w.shape == (2, 3, 54, 54)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_xla_matches_jax_nn_in_bf16():
  q, k, v = _qkv(dtype=jnp.bfloat16)
  ours = attention.dot_product_attention(q, k, v, attention="xla").astype(jnp.float32)
  ref = jax.nn.dot_product_attention(q, k, v, implementation="xla").astype(jnp.float32)
  np.testing.assert_allclose(ours, ref, atol=3e-2)


def test_unknown_implementation_is_clear():
  q, k, v = _qkv(t=8)
  with pytest.raises(ValueError, match="Unknown attention implementation 'flash'"):
    attention.dot_product_attention(q, k, v, attention="flash")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t", [64, 61])  # 4 query chunks per head; at 61 the last is padded
def test_chunked_matches_xla(monkeypatch, causal, t):
  monkeypatch.setattr(attention, "_CHUNK_SCORES", 2 * t * 16)  # ≈ t/16 query chunks per head
  q, k, v = _qkv(t=t)
  ours = attention.dot_product_attention(q, k, v, attention="chunked", causal=causal)
  ref = attention.dot_product_attention(q, k, v, attention="xla", causal=causal)
  np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_chunked_matches_xla_in_bf16():
  q, k, v = _qkv(dtype=jnp.bfloat16)
  ours = attention.dot_product_attention(q, k, v, attention="chunked").astype(jnp.float32)
  ref = attention.dot_product_attention(q, k, v, attention="xla").astype(jnp.float32)
  np.testing.assert_allclose(ours, ref, atol=2e-2)


def test_chunked_keeps_batch_sharding():
  mesh = jax.make_mesh((8,), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  keys = jax.random.split(jax.random.key(1), 3)
  q, k, v = (jax.device_put(jax.random.normal(key, (8, 37, 2, 8)), sharding) for key in keys)
  ours = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, attention="chunked"))(q, k, v)
  assert ours.sharding.is_equivalent_to(sharding, 4)
  np.testing.assert_allclose(ours, attention.dot_product_attention(q, k, v, attention="xla"), atol=1e-6)


def test_auto_is_chunked_on_cpu_and_never_fp32_cudnn(monkeypatch):
  q, k, v = _qkv(t=8)
  chunked = attention.dot_product_attention(q, k, v, attention="chunked")
  np.testing.assert_array_equal(attention.dot_product_attention(q, k, v, attention="auto"), chunked)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # fp32 must not reach cuDNN
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, attention="auto"),
                             attention.dot_product_attention(q, k, v, attention="xla"), atol=1e-6)


def test_choices_follow_the_platform_traced_for_not_the_host():
  """Compiling ahead for a TPU slice from a CPU host (`bench/sharded_step.py --topology`): the mesh in
  context names the target, and the kernel and the "auto" choice follow it."""
  from jax._src.mesh import AbstractDevice  # no public constructor; what a TPU mesh's abstract mesh holds
  q = jax.ShapeDtypeStruct((2, 261, 2, 64), jnp.bfloat16)
  auto_loops = lambda: "scan" in str(jax.make_jaxpr(
      lambda q: attention.dot_product_attention(q, q, q, attention="auto"))(q))  # "chunked" is a lax.map
  assert platform.target_platform() == "cpu" and auto_loops()
  tpu = jax.sharding.AbstractMesh((2,), ("data",), abstract_device=AbstractDevice("TPU v5p", None, "tpu"))
  with jax.sharding.use_abstract_mesh(tpu):
    assert platform.target_platform() == "tpu"
    assert attention.pallas_kernel(q) is flash_attention_tpu
    assert not auto_loops()  # "xla" on TPU
  with jax.set_mesh(jax.make_mesh((8,), ("data",))):
    assert platform.target_platform() == "cpu"
    assert attention.pallas_kernel(q) is flash_attention
