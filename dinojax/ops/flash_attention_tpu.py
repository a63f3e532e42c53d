"""Flash attention for TPU (Mosaic) as Pallas kernels, forward and backward, with the same contract
as `flash_attention.py`: non-causal, sequence lengths that are not block multiples (padded keys are
masked out of the softmax), fp32 statistics and accumulators whatever the input dtype.

TPU kernels cannot loop over a whole sequence held in VMEM the way the portable kernel does, so the
key (or, for dK/dV, the query) blocks are the innermost, sequential grid axis and the running
softmax statistics live in VMEM scratch between grid steps. The matmuls take the inputs' dtype
(bf16 feeds the MXU directly) and accumulate in fp32.

Per-row statistics (the log-sum-exp saved for the backward pass, and Δ = rowsum(dO ∘ O)) are stored
lane-dense, one row of `block` values per query block, instead of broadcast over 128 lanes: at
ViT-L/14 shapes the broadcast layout would keep gigabytes of residuals alive. The backward passes
therefore work with transposed scores (keys × queries), where those rows broadcast for free.

On CPU the kernels run in TPU interpret mode (`pltpu.InterpretParams`), which is how they are tested.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from dinojax.ops.flash_attention import differentiable
from dinojax.ops.platform import target_platform

_NEG_INF = -1e30  # finite: a fully masked block must not turn the running max into nan
_LANES = 128


def _dot(a, b, contract):
  """a·b contracting the given (lhs, rhs) dims, fp32 accumulation, inputs in their own dtype."""
  return jax.lax.dot_general(a, b, ((contract[:1], contract[1:]), ((), ())),
                             preferred_element_type=jnp.float32)


def _valid(start, shape, axis, seq_len):
  """True where position `start + index along axis` is a real (unpadded) token."""
  return start + jax.lax.broadcasted_iota(jnp.int32, shape, axis) < seq_len


def _column(row):
  """A (1, n) row as an (n, 1) column, through a lane-aligned transpose Mosaic supports."""
  return jnp.broadcast_to(row, (_LANES, row.shape[1])).T[:, :1]


def _forward_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, m_ref, l_ref, acc_ref, *, seq_len, scale):
  j = pl.program_id(2)
  block_k = k_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, _NEG_INF, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  s = _dot(q_ref[...], k_ref[...], (1, 1)) * scale
  s = jnp.where(_valid(j * block_k, s.shape, 1, seq_len), s, _NEG_INF)
  m_prev = m_ref[...]  # (block_q, 128): every lane holds the row's value
  m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
  p = jnp.exp(s - m_new[:, :1])
  correction = jnp.exp(m_prev - m_new)
  l_ref[...] = l_ref[...] * correction + p.sum(axis=1, keepdims=True)
  m_ref[...] = m_new
  acc_ref[...] = acc_ref[...] * correction[:, :1] + _dot(p.astype(v_ref.dtype), v_ref[...], (1, 0))

  @pl.when(j == pl.num_programs(2) - 1)
  def _finish():
    l = l_ref[...]
    o_ref[...] = (acc_ref[...] / l[:, :1]).astype(o_ref.dtype)
    lse = m_ref[...] + jnp.log(l)  # (block_q, 128), lanes equal
    lse_ref[...] = lse.T[:1, :]     # one lane-dense row


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_acc, dv_acc,
                 *, scale):
  """One key block, looping over query blocks. Padded query rows need no mask: their dO and Δ are
  zero, so they add nothing to dV or dK."""
  i = pl.program_id(2)

  @pl.when(i == 0)
  def _init():
    dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
    dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

  q, do = q_ref[...], do_ref[...]
  s_t = _dot(k_ref[...], q, (1, 1)) * scale                 # (block_k, block_q)
  p_t = jnp.exp(s_t - lse_ref[...])
  dv_acc[...] += _dot(p_t.astype(do.dtype), do, (1, 0))
  dp_t = _dot(v_ref[...], do, (1, 1))
  ds_t = p_t * (dp_t - delta_ref[...])
  dk_acc[...] += _dot(ds_t.astype(q.dtype), q, (1, 0)) * scale

  @pl.when(i == pl.num_programs(2) - 1)
  def _finish():
    dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_acc, *, seq_len, scale):
  """One query block, looping over key blocks; padded keys are masked so they take no gradient."""
  j = pl.program_id(2)
  block_k = k_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)

  k = k_ref[...]
  s = _dot(q_ref[...], k, (1, 1)) * scale                   # (block_q, block_k)
  p = jnp.exp(s - _column(lse_ref[...]))
  p = jnp.where(_valid(j * block_k, s.shape, 1, seq_len), p, 0.0)
  dp = _dot(do_ref[...], v_ref[...], (1, 1))
  ds = p * (dp - _column(delta_ref[...]))
  dq_acc[...] += _dot(ds.astype(k.dtype), k, (1, 0)) * scale

  @pl.when(j == pl.num_programs(2) - 1)
  def _finish():
    dq_ref[...] = dq_acc[...].astype(dq_ref.dtype)


def _rows(block, head_dim, which):
  """BlockSpec of one block of rows of a (batch·heads, sequence, head_dim) array; `which` picks the
  grid axis (1 or 2) that indexes the block."""
  return pl.BlockSpec((None, block, head_dim), lambda b, x, y: (b, (x, y)[which - 1], 0))


def _stat_rows(block, which):
  """BlockSpec of one lane-dense row of a (batch·heads, 1, sequence) statistic."""
  return pl.BlockSpec((None, 1, block), lambda b, x, y: (b, 0, (x, y)[which - 1]))


def _call(kernel, grid, in_specs, out_specs, out_shape, scratch, interpret, name):
  return pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      scratch_shapes=scratch, interpret=interpret, name=name,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")))


def _forward(q, k, v, seq_len, block, interpret):
  bh, padded, head_dim = q.shape
  n = padded // block
  kernel = functools.partial(_forward_kernel, seq_len=seq_len, scale=1.0 / math.sqrt(head_dim))
  o, lse = _call(
      kernel, (bh, n, n), [_rows(block, head_dim, 1), _rows(block, head_dim, 2),
                           _rows(block, head_dim, 2)],
      [_rows(block, head_dim, 1), _stat_rows(block, 1)],
      [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((bh, 1, padded), jnp.float32)],
      [pltpu.VMEM((block, _LANES), jnp.float32), pltpu.VMEM((block, _LANES), jnp.float32),
       pltpu.VMEM((block, head_dim), jnp.float32)],
      interpret, "dinojax_flash_forward_tpu")(q, k, v)
  return o, lse


def _backward(q, k, v, do, lse, delta, seq_len, block, interpret):
  bh, padded, head_dim = q.shape
  delta = delta[:, None, :]  # lane-dense, as the log-sum-exp
  n = padded // block
  scale = 1.0 / math.sqrt(head_dim)
  # dK, dV: grid (bh, key block, query block); the query block is axis 2.
  dk, dv = _call(
      functools.partial(_dkdv_kernel, scale=scale), (bh, n, n),
      [_rows(block, head_dim, 2), _rows(block, head_dim, 1), _rows(block, head_dim, 1),
       _rows(block, head_dim, 2), _stat_rows(block, 2), _stat_rows(block, 2)],
      [_rows(block, head_dim, 1), _rows(block, head_dim, 1)],
      [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      [pltpu.VMEM((block, head_dim), jnp.float32), pltpu.VMEM((block, head_dim), jnp.float32)],
      interpret, "dinojax_flash_dkdv_tpu")(q, k, v, do, lse, delta)
  # dQ: grid (bh, query block, key block).
  dq = _call(
      functools.partial(_dq_kernel, seq_len=seq_len, scale=scale), (bh, n, n),
      [_rows(block, head_dim, 1), _rows(block, head_dim, 2), _rows(block, head_dim, 2),
       _rows(block, head_dim, 1), _stat_rows(block, 1), _stat_rows(block, 1)],
      _rows(block, head_dim, 1), jax.ShapeDtypeStruct(q.shape, q.dtype),
      [pltpu.VMEM((block, head_dim), jnp.float32)],
      interpret, "dinojax_flash_dq_tpu")(q, k, v, do, lse, delta)
  return dq, dk, dv


_flash = differentiable(_forward, _backward)


def flash_attention_tpu(q: jax.Array, k: jax.Array, v: jax.Array, block: int = 128,
                        interpret: bool | None = None) -> jax.Array:
  """softmax(q kᵀ / √d) v for (B, T, heads, head_dim) inputs, same layout out, as TPU kernels.

  `block` (a multiple of 128) is the query and key tile; `interpret` defaults to True off TPU, where
  the kernels run in TPU interpret mode.
  """
  if block % _LANES:
    raise ValueError(f"TPU flash attention needs a block that is a multiple of {_LANES}, got {block}.")
  if interpret is None:
    interpret = target_platform() != "tpu"
  return _flash(q, k, v, block, pltpu.InterpretParams() if interpret else False)
