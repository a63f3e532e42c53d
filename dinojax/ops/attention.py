"""The one place attention is computed; every model calls `dot_product_attention`.

Implementations, chosen by name (a config value):
  "xla"    the reference: einsum, fp32 softmax, einsum. Runs everywhere; the only one that can also
           return the attention weights.
  "chunked" the reference's numerics one head and one query chunk at a time (a loop), so only a
           cache-sized block of scores exists at once; the fast XLA path on CPU.
  "cudnn"  `jax.nn.dot_product_attention` with the cuDNN fused kernel (GPU only).
  "pallas" our Pallas flash-attention kernels: Mosaic TPU on TPU (`flash_attention_tpu.py`), Mosaic
           GPU (Hopper wgmma) on GPU for bf16/fp16 (`flash_attention_gpu.py`), and the portable
           kernels otherwise (`flash_attention.py`: Triton on GPU, interpret mode on CPU).
  "auto"   the fastest measured for the platform (see docs/benchmarks.md).
The platform is the one the program is traced for (`target_platform`): the mesh's, which is another
machine's when compiling ahead of time for it.
"""


import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dinojax.ops.flash_attention import flash_attention
from dinojax.ops.flash_attention_gpu import flash_attention_gpu
from dinojax.ops.flash_attention_tpu import flash_attention_tpu
from dinojax.ops.platform import target_platform
from dinojax.ops.sharding import divisible_spec

IMPLEMENTATIONS = ("xla", "chunked", "cudnn", "pallas", "auto")
# Measured (docs/benchmarks.md): on an H200 cuDNN beats our Mosaic GPU kernels at every DINOv2
# training length; on CPU the B·heads·T² scores of "xla" make it memory-bound and "chunked" is faster.
# TPU keeps XLA until the Mosaic TPU kernels are timed there.
_AUTO = {"cpu": "chunked", "gpu": "cudnn", "tpu": "xla"}
# Scores (fp32 elements, 8 MiB) per step of "chunked": small enough for the caches of a server CPU,
# large enough that the per-step loop overhead stays negligible.
_CHUNK_SCORES = 1 << 21


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


def _chunked(q, k, v, causal=False):
  """`_xla` in a `lax.map` over (head, query chunk): each step sees one head's keys and values for
  the whole batch and as many queries as keep its scores under `_CHUNK_SCORES`. Steps work on
  (B, T, head_dim) slabs, without a heads axis, which XLA's CPU dots run faster. The batch stays
  inside every step, so a batch-sharded input stays sharded."""
  b, t, h, d = q.shape
  n = min(t, -(-b * t * t // _CHUNK_SCORES))  # query chunks per head
  c = -(-t // n)
  q = jnp.pad(q * d ** -0.5, ((0, 0), (0, n * c - t), (0, 0), (0, 0)))
  q_blocks = q.reshape(b, n, c, h, d).transpose(3, 1, 0, 2, 4).reshape(h * n, b, c, d)
  k, v = (jnp.moveaxis(x, 2, 0) for x in (k, v))  # (heads, B, T, head_dim)

  def step(args):
    q_block, i = args
    logits = jnp.einsum("bqd,bkd->bqk", q_block, k[i // n], preferred_element_type=jnp.float32)
    if causal:
      visible = ((i % n) * c + jnp.arange(c))[:, None] >= jnp.arange(t)[None, :]
      logits = jnp.where(visible, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bqk,bkd->bqd", probs, v[i // n])

  out = jax.lax.map(step, (q_blocks, jnp.arange(h * n)))  # (heads·chunks, B, c, head_dim)
  out = out.reshape(h, n, b, c, d).transpose(2, 1, 3, 0, 4).reshape(b, n * c, h, d)
  return out[:, :t]


def _cudnn(q, k, v, causal=False):
  """cuDNN's fused kernel. Its backward pass refuses odd lengths (JAX 0.11, H200), and DINOv2's
  are odd (1 + 256 tokens, + 4 registers): those get one padded row that the key lengths mask."""
  b, t = q.shape[:2]
  if t % 2 == 0:
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
  q, k, v = (jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0))) for x in (q, k, v))
  lengths = jnp.full((b,), t, jnp.int32)
  out = jax.nn.dot_product_attention(q, k, v, is_causal=causal, query_seq_lengths=lengths,
                                     key_value_seq_lengths=lengths, implementation="cudnn")
  return out[:, :t]


def pallas_kernel(q: jax.Array):
  """The flash-attention kernel `attention="pallas"` runs for inputs like `q` on the platform traced
  for."""
  platform = target_platform()
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
  implementation = _AUTO.get(target_platform(), "xla")
  if implementation == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
    implementation = "xla"  # cuDNN's fused attention has no fp32 kernel
  return _DISPATCH[implementation](q, k, v, causal)


_DISPATCH = {"xla": _xla, "chunked": _chunked, "cudnn": _cudnn, "pallas": _pallas, "auto": _auto}


def check_implementation(attention: str) -> None:
  if attention not in _DISPATCH:
    raise ValueError(
        f"Unknown attention implementation {attention!r}; choose one of {IMPLEMENTATIONS}.")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          attention: str = "xla", causal: bool = False) -> jax.Array:
  """Multi-head attention over (B, T, heads, head_dim) inputs, same layout out, computed by the
  implementation named `attention` (the models' and configs' `attention`)."""
  check_implementation(attention)
  return _DISPATCH[attention](q, k, v, causal)
