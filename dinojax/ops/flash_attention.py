"""Flash attention (Dao et al., 2022; FlashAttention-2's loop order) as Pallas kernels, forward and
backward, for DINOv2's non-causal attention over sequence lengths that are not block multiples
(1 + 4 + 256 = 261 tokens for a 224 crop with registers).

The sequence is padded to the block size and padded keys are masked out of the softmax, so no padded
key ever receives weight; padded query rows are dropped from the output and from every gradient.
Softmax statistics, accumulators and the log-sum-exp saved for the backward pass are fp32 whatever
the input dtype. On CPU the kernels run in Pallas interpret mode (for tests); on GPU they lower
through Pallas' Triton backend, asked for explicitly: JAX's default GPU backend (Mosaic GPU) cannot
copy a whole key sequence longer than 256 rows into one block, which this loop order needs.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from dinojax.ops.platform import target_platform

_NEG_INF = -1e30  # finite, so fully masked rows give exp(-inf - -inf) = nan nowhere
_TRITON = pltriton.CompilerParams(num_warps=4, num_stages=2)


def _pad_rows(x: jax.Array, block: int) -> jax.Array:
  """Zero-pads axis 1 (the sequence) of rows or their statistics to a multiple of `block`."""
  length = pl.cdiv(x.shape[1], block) * block
  return jnp.pad(x, ((0, 0), (0, length - x.shape[1])) + ((0, 0),) * (x.ndim - 2))


def _key_mask(start, block, seq_len):
  return (start + jnp.arange(block)) < seq_len


def _forward_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, block_k, seq_len, scale):
  q = q_ref[...].astype(jnp.float32) * scale
  block_q, head_dim = q.shape
  num_k_blocks = pl.cdiv(seq_len, block_k)

  def body(j, carry):
    m, l, acc = carry
    start = j * block_k
    k = k_ref[pl.ds(start, block_k), :].astype(jnp.float32)
    v = v_ref[pl.ds(start, block_k), :].astype(jnp.float32)
    s = q @ k.T
    s = jnp.where(_key_mask(start, block_k, seq_len)[None, :], s, _NEG_INF)
    m_new = jnp.maximum(m, s.max(axis=-1))
    p = jnp.exp(s - m_new[:, None])
    correction = jnp.exp(m - m_new)
    return m_new, l * correction + p.sum(axis=-1), acc * correction[:, None] + p @ v

  init = (jnp.full((block_q,), _NEG_INF, jnp.float32), jnp.zeros((block_q,), jnp.float32),
          jnp.zeros((block_q, head_dim), jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, num_k_blocks, body, init)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l)


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, block_q,
                 seq_len, scale):
  k = k_ref[...].astype(jnp.float32)
  v = v_ref[...].astype(jnp.float32)
  num_q_blocks = pl.cdiv(seq_len, block_q)

  def body(i, carry):
    dk, dv = carry
    start = i * block_q
    q = q_ref[pl.ds(start, block_q), :].astype(jnp.float32)
    do = do_ref[pl.ds(start, block_q), :].astype(jnp.float32)
    lse = lse_ref[pl.ds(start, block_q)]
    delta = delta_ref[pl.ds(start, block_q)]
    p = jnp.exp((q * scale) @ k.T - lse[:, None])
    p = jnp.where(_key_mask(start, block_q, seq_len)[:, None], p, 0.0)  # padded queries
    dv = dv + p.T @ do
    ds = p * (do @ v.T - delta[:, None])
    return dk + ds.T @ q * scale, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(0, num_q_blocks, body, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, block_k, seq_len, scale):
  q = q_ref[...].astype(jnp.float32)
  do = do_ref[...].astype(jnp.float32)
  lse = lse_ref[...]
  delta = delta_ref[...]
  num_k_blocks = pl.cdiv(seq_len, block_k)

  def body(j, dq):
    start = j * block_k
    k = k_ref[pl.ds(start, block_k), :].astype(jnp.float32)
    v = v_ref[pl.ds(start, block_k), :].astype(jnp.float32)
    p = jnp.exp((q * scale) @ k.T - lse[:, None])
    p = jnp.where(_key_mask(start, block_k, seq_len)[None, :], p, 0.0)  # padded keys
    ds = p * (do @ v.T - delta[:, None])
    return dq + ds @ k * scale

  dq = jax.lax.fori_loop(0, num_k_blocks, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _specs(block: int, padded: int, head_dim: int):
  """BlockSpecs over (batch·heads, sequence, head_dim): one block of rows, or the whole sequence."""
  rows = pl.BlockSpec((None, block, head_dim), lambda b, i: (b, i, 0))
  whole = pl.BlockSpec((None, padded, head_dim), lambda b, i: (b, 0, 0))
  stat_rows = pl.BlockSpec((None, block), lambda b, i: (b, i))
  stat_whole = pl.BlockSpec((None, padded), lambda b, i: (b, 0))
  return rows, whole, stat_rows, stat_whole


def _forward(q, k, v, seq_len, block, interpret):
  bh, padded, head_dim = q.shape
  rows, whole, stat_rows, _ = _specs(block, padded, head_dim)
  kernel = functools.partial(_forward_kernel, block_k=block, seq_len=seq_len,
                             scale=1.0 / math.sqrt(head_dim))
  o, lse = pl.pallas_call(
      kernel, grid=(bh, padded // block), in_specs=[rows, whole, whole],
      out_specs=[rows, stat_rows],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((bh, padded), jnp.float32)],
      interpret=interpret, compiler_params=_TRITON, name="dinojax_flash_forward")(q, k, v)
  return o, lse


def _backward(q, k, v, do, lse, delta, seq_len, block, interpret):
  bh, padded, head_dim = q.shape
  rows, whole, stat_rows, stat_whole = _specs(block, padded, head_dim)
  scale = 1.0 / math.sqrt(head_dim)
  grid = (bh, padded // block)
  dk, dv = pl.pallas_call(
      functools.partial(_dkdv_kernel, block_q=block, seq_len=seq_len, scale=scale), grid=grid,
      in_specs=[whole, rows, rows, whole, stat_whole, stat_whole], out_specs=[rows, rows],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      interpret=interpret, compiler_params=_TRITON, name="dinojax_flash_dkdv")(q, k, v, do, lse, delta)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, block_k=block, seq_len=seq_len, scale=scale), grid=grid,
      in_specs=[rows, whole, whole, rows, stat_rows, stat_rows], out_specs=rows,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      interpret=interpret, compiler_params=_TRITON, name="dinojax_flash_dq")(q, k, v, do, lse, delta)
  return dq, dk, dv


def differentiable(forward, backward):
  """Attention over (B, T, heads, head_dim) inputs from a pair of kernel launchers over
  (batch·heads, T', head_dim) rows zero-padded to T', a multiple of `block` (the kernels mask keys
  past `seq_len`): `forward(q, k, v, seq_len, block, interpret) -> (o, lse)` and
  `backward(q, k, v, do, lse, delta, seq_len, block, interpret) -> (dq, dk, dv)`, where
  Δ = rowsum(dO ∘ O). Padding and slicing back are done here, once for every kernel set."""

  def padded_forward(q, k, v, block, interpret):
    seq_len = q.shape[1]
    o, lse = forward(*(_pad_rows(x, block) for x in (q, k, v)), seq_len, block, interpret)
    return o[:, :seq_len], lse

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
  def flash(q, k, v, block, interpret):
    return padded_forward(q, k, v, block, interpret)[0]

  def flash_fwd(q, k, v, block, interpret):
    o, lse = padded_forward(q, k, v, block, interpret)
    return o, (q, k, v, o, lse)  # unpadded, so the residuals cost no more than the inputs

  def flash_bwd(block, interpret, residuals, do):
    q, k, v, o, lse = residuals
    seq_len = q.shape[1]
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    grads = backward(*(_pad_rows(x, block) for x in (q, k, v, do)), lse, _pad_rows(delta, block),
                     seq_len, block, interpret)
    return tuple(g[:, :seq_len] for g in grads)

  flash.defvjp(flash_fwd, flash_bwd)

  def attention(q, k, v, block, interpret):
    b, t, h, d = q.shape
    to_rows = lambda x: x.transpose(0, 2, 1, 3).reshape(b * h, t, d)
    out = flash(to_rows(q), to_rows(k), to_rows(v), block, interpret)
    return out.reshape(b, h, t, d).transpose(0, 2, 1, 3)

  # Jitted, so a model that calls it in every block lowers each kernel once per shape and calls it
  # (lowering a ViT-L train step's ~100 kernel instances one by one took minutes).
  return jax.jit(attention, static_argnums=(3, 4))


_flash = differentiable(_forward, _backward)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, block: int = 64,
                    interpret: bool | None = None) -> jax.Array:
  """softmax(q kᵀ / √d) v for (B, T, heads, head_dim) inputs, same layout out.

  `block` is the query and key tile (rows per program); `interpret` defaults to True on CPU.
  """
  if interpret is None:
    interpret = target_platform() == "cpu"
  return _flash(q, k, v, block, interpret)
