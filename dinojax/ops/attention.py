"""The one place attention is computed; every model calls `dot_product_attention`.

Implementations, chosen by name (a config value):
  "xla"    the reference: einsum, fp32 softmax, einsum. Runs everywhere; the only one that can also
           return the attention weights.
  "cudnn"  `jax.nn.dot_product_attention` with the cuDNN fused kernel (GPU only).
  "pallas" our Pallas flash-attention kernels: Mosaic TPU on TPU (`flash_attention_tpu.py`), Mosaic
           GPU (Hopper wgmma) on GPU for bf16/fp16 (`flash_attention_gpu.py`), and the portable
           kernels otherwise (`flash_attention.py`: Triton on GPU, interpret mode on CPU).
  "auto"   the fastest measured for the platform (see docs/benchmarks.md).
"""


import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dinojax.ops.flash_attention import flash_attention
from dinojax.ops.flash_attention_gpu import flash_attention_gpu
from dinojax.ops.flash_attention_tpu import flash_attention_tpu
from dinojax.ops.sharding import divisible_spec

IMPLEMENTATIONS = ("xla", "cudnn", "pallas", "auto")
# Until the GPU and TPU kernels are benchmarked against cuDNN / XLA, "auto" keeps the vendor paths.
_AUTO = {"cpu": "xla", "gpu": "cudnn", "tpu": "xla"}


def attention_logits(q: jax.Array, k: jax.Array) -> jax.Array:
  """Scaled dot products q·k/√d (B, heads, Tq, Tk), fp32, for q, k of shape (B, T, heads, head_dim)."""
  scale = q.shape[-1] ** -0.5
  return jnp.einsum("bqhd,bkhd->bhqk", q * scale, k, preferred_element_type=jnp.float32)


def attention_weights(q: jax.Array, k: jax.Array, causal: bool = False) -> jax.Array:
  """Softmax attention probabilities (B, heads, Tq, Tk); `causal` lets query i see keys ≤ i only
  (text towers)."""
  logits = attention_logits(q, k)
  if causal:
    tq, tk = logits.shape[-2:]
    logits = jnp.where(jnp.tril(jnp.ones((tq, tk), bool)), logits, -jnp.inf)
  return jax.nn.softmax(logits, axis=-1)


def _xla(q, k, v, causal=False):
  probs = attention_weights(q, k, causal).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def _cudnn(q, k, v, causal=False):
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")


def pallas_kernel(q: jax.Array):
  """The flash-attention kernel `attention="pallas"` runs for inputs like `q` on this platform."""
  platform = jax.default_backend()
  if platform == "tpu":
    return flash_attention_tpu
  hopper = platform == "gpu" and getattr(jax.devices()[0], "compute_capability", "") == "9.0"
  if hopper and q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] % 64 == 0:
    return flash_attention_gpu  # wgmma exists on Hopper (sm_90a) only
  return flash_attention


def _pallas(q, k, v, causal=False):
  """The kernel is a custom call XLA cannot partition, so under a mesh it runs per shard, with batch
  and heads split as the activation rules say (the same axes the surrounding model uses)."""
  if causal:
    raise NotImplementedError("The Pallas kernels are non-causal (DINOv2's attention); use "
                              "attention='xla' or 'cudnn' for causal text towers.")
  kernel = pallas_kernel(q)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return kernel(q, k, v)
  spec = divisible_spec(P(*nn.logical_to_mesh_axes(("batch", None, "act_heads", None))), q.shape, mesh)
  # check_vma=False: pallas_call outputs carry no varying-axes annotation.
  return jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)(q, k, v)


def _auto(q, k, v, causal=False):
  return _DISPATCH[_AUTO.get(jax.default_backend(), "xla")](q, k, v, causal)


_DISPATCH = {"xla": _xla, "cudnn": _cudnn, "pallas": _pallas, "auto": _auto}


def check_implementation(implementation: str) -> None:
  if implementation not in _DISPATCH:
    raise ValueError(
        f"Unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}.")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          implementation: str = "xla", causal: bool = False) -> jax.Array:
  """Multi-head attention over (B, T, heads, head_dim) inputs, same layout out."""
  check_implementation(implementation)
  return _DISPATCH[implementation](q, k, v, causal)
