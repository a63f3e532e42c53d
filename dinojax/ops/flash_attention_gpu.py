"""Flash attention for Hopper GPUs as Mosaic GPU Pallas kernels (wgmma on shared-memory tiles, TMA
loads pipelined by `plgpu.emit_pipeline`), forward and backward, with the contract of
`flash_attention.py`: non-causal, lengths that are not block multiples (padded keys masked out of the
softmax), fp32 statistics and accumulators. bf16 and fp16 inputs only: wgmma has no fp32 operands.

One warpgroup computes a 64-row block. wgmma multiplies an (M, K) tile by a (K, N) tile, so the
operands that enter as a transposed factor (Kᵀ in S = QKᵀ, and likewise in the backward pass) are
handed to the kernels already transposed by XLA, and the probabilities go through shared memory
before their matmul. Both choices keep the kernels runnable in Mosaic GPU's interpreter, which is
how they are tested on CPU; keeping P in registers and transposing in shared memory are the known
next steps once they can be measured on a GPU.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from dinojax.ops.flash_attention import differentiable
from dinojax.ops.platform import target_platform

_NEG_INF = -1e30
BLOCK = 64  # wgmma's M: the rows of one warpgroup
_SWIZZLED = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))


class _Registers:
  """Register layouts for values Mosaic GPU cannot infer one for (iotas, fresh statistics, rows read
  from shared memory). The interpreter has no layouts, so there they are skipped."""

  def __init__(self, interpret):
    self.interpret = interpret

  def cast(self, x, layout):
    return x if self.interpret else plgpu.layout_cast(x, layout)

  def iota(self, shape, axis):
    if self.interpret:
      return lax.broadcasted_iota(jnp.int32, shape, axis)
    return plgpu.broadcasted_iota(jnp.int32, shape, axis, layout=plgpu.Layout.WGMMA)

  def stat(self, ref, along):
    """A per-row (along=1) or per-column (along=0) statistic, ready to broadcast over a tile."""
    if self.interpret:
      return ref[...]
    return plgpu.load(ref, (), layout=plgpu.Layout.WGMMA.reduce(along))


def _mma(a_smem, b_smem, shape):
  """a @ b of two shared-memory tiles, fp32."""
  def run(acc):
    plgpu.wgmma(acc, a_smem, b_smem)
    return acc[...]
  return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))


def _through_smem(x, smem):
  """Stores a register tile where the next wgmma can read it."""
  smem[...] = x.astype(smem.dtype)
  plgpu.commit_smem()
  return smem


def _rows(x, shape):
  return lax.broadcast_in_dim(x, shape, [0])


def _cols(x, shape):
  return lax.broadcast_in_dim(x, shape, [1])


def _tile(shape, dtype):
  return plgpu.SMEM(shape, dtype, transforms=_SWIZZLED)


def _spec(shape, index_map):
  return plgpu.BlockSpec(shape, index_map, transforms=_SWIZZLED)


def _stat_spec():
  return plgpu.BlockSpec((BLOCK,), lambda j: (j,))


def _load(pairs, barriers):
  """Copies each (gmem slice, smem tile) pair, one barrier each, and waits for all of them."""
  for i, (src, dst) in enumerate(pairs):
    plgpu.copy_gmem_to_smem(src, dst, barriers.at[i])
  for i in range(len(pairs)):
    plgpu.barrier_wait(barriers.at[i])


def _store(pairs):
  plgpu.commit_smem()
  for src, dst in pairs:
    plgpu.copy_smem_to_gmem(src, dst)
  plgpu.wait_smem_to_gmem(0)


def _forward_kernel(q_ref, kt_ref, v_ref, o_ref, lse_ref, q_smem, p_smem, o_smem, lse_smem, barriers,
                    *, seq_len, scale, interpret):
  regs = _Registers(interpret)
  row, qi = lax.axis_index("rows"), lax.axis_index("blocks")
  rows = pl.ds(qi * BLOCK, BLOCK)
  head_dim = q_smem.shape[1]
  shape = (BLOCK, BLOCK)
  _load([(q_ref.at[row, rows], q_smem)], barriers)

  def step(idx, kt_smem, v_smem, carry):
    acc, m, l = carry
    s = _mma(q_smem, kt_smem, shape) * scale
    s = jnp.where(idx[0] * BLOCK + regs.iota(shape, 1) < seq_len, s, _NEG_INF)
    m_new = jnp.maximum(m, s.max(axis=1))
    p = jnp.exp(s - _rows(m_new, shape))
    correction = jnp.exp(m - m_new)
    pv = _mma(_through_smem(p, p_smem), v_smem, (BLOCK, head_dim))
    return acc * _rows(correction, acc.shape) + pv, m_new, l * correction + p.sum(axis=1)

  stats = plgpu.Layout.WGMMA.reduce(1)
  init = (regs.cast(jnp.zeros((BLOCK, head_dim), jnp.float32), plgpu.Layout.WGMMA),
          regs.cast(jnp.full((BLOCK,), _NEG_INF, jnp.float32), stats),
          regs.cast(jnp.zeros((BLOCK,), jnp.float32), stats))
  acc, m, l = plgpu.emit_pipeline(
      step, grid=(kt_ref.shape[2] // BLOCK,), max_concurrent_steps=2, init_carry=init,
      in_specs=[_spec((head_dim, BLOCK), lambda j: (0, j)), _spec((BLOCK, head_dim), lambda j: (j, 0))],
  )(kt_ref.at[row], v_ref.at[row])
  o_smem[...] = (acc / _rows(l, acc.shape)).astype(o_smem.dtype)
  lse_smem[...] = m + jnp.log(l)
  _store([(o_smem, o_ref.at[row, rows]), (lse_smem, lse_ref.at[row, rows])])


def _dkdv_kernel(q_ref, qt_ref, k_ref, v_ref, do_ref, dot_ref, lse_ref, delta_ref, dk_ref, dv_ref,
                 k_smem, v_smem, p_smem, dk_smem, dv_smem, barriers, *, scale, interpret):
  """One key block, streaming the query blocks. Works with transposed scores (keys × queries) so
  that the per-query statistics broadcast along columns. Padded query rows need no mask: their dO
  and Δ are zero, so they add nothing."""
  regs = _Registers(interpret)
  row, kj = lax.axis_index("rows"), lax.axis_index("blocks")
  keys = pl.ds(kj * BLOCK, BLOCK)
  head_dim = k_smem.shape[1]
  shape = (BLOCK, BLOCK)
  _load([(k_ref.at[row, keys], k_smem), (v_ref.at[row, keys], v_smem)], barriers)

  def step(_, q_smem, qt_smem, do_smem, dot_smem, lse_smem, delta_smem, carry):
    dk, dv = carry
    s_t = _mma(k_smem, qt_smem, shape) * scale
    p_t = jnp.exp(s_t - _cols(regs.stat(lse_smem, 0), shape))
    dv = dv + _mma(_through_smem(p_t, p_smem), do_smem, dv.shape)
    dp_t = _mma(v_smem, dot_smem, shape)
    ds_t = p_t * (dp_t - _cols(regs.stat(delta_smem, 0), shape))
    return dk + _mma(_through_smem(ds_t, p_smem), q_smem, dk.shape) * scale, dv

  zeros = regs.cast(jnp.zeros((BLOCK, head_dim), jnp.float32), plgpu.Layout.WGMMA)
  dk, dv = plgpu.emit_pipeline(
      step, grid=(q_ref.shape[1] // BLOCK,), max_concurrent_steps=2, init_carry=(zeros, zeros),
      in_specs=[_spec((BLOCK, head_dim), lambda i: (i, 0)), _spec((head_dim, BLOCK), lambda i: (0, i)),
                _spec((BLOCK, head_dim), lambda i: (i, 0)), _spec((head_dim, BLOCK), lambda i: (0, i)),
                _stat_spec(), _stat_spec()],
  )(q_ref.at[row], qt_ref.at[row], do_ref.at[row], dot_ref.at[row], lse_ref.at[row],
    delta_ref.at[row])
  dk_smem[...] = dk.astype(dk_smem.dtype)
  dv_smem[...] = dv.astype(dv_smem.dtype)
  _store([(dk_smem, dk_ref.at[row, keys]), (dv_smem, dv_ref.at[row, keys])])


def _dq_kernel(q_ref, do_ref, lse_ref, delta_ref, k_ref, kt_ref, vt_ref, dq_ref, q_smem, do_smem,
               lse_smem, delta_smem, ds_smem, dq_smem, barriers, *, seq_len, scale, interpret):
  """One query block, streaming the key blocks; padded keys are masked so they take no gradient."""
  regs = _Registers(interpret)
  row, qi = lax.axis_index("rows"), lax.axis_index("blocks")
  rows = pl.ds(qi * BLOCK, BLOCK)
  head_dim = q_smem.shape[1]
  shape = (BLOCK, BLOCK)
  _load([(q_ref.at[row, rows], q_smem), (do_ref.at[row, rows], do_smem),
         (lse_ref.at[row, rows], lse_smem), (delta_ref.at[row, rows], delta_smem)], barriers)
  lse = _rows(regs.stat(lse_smem, 1), shape)
  delta = _rows(regs.stat(delta_smem, 1), shape)

  def step(idx, k_smem, kt_smem, vt_smem, dq):
    p = jnp.exp(_mma(q_smem, kt_smem, shape) * scale - lse)
    p = jnp.where(idx[0] * BLOCK + regs.iota(shape, 1) < seq_len, p, 0.0)
    ds = p * (_mma(do_smem, vt_smem, shape) - delta)
    return dq + _mma(_through_smem(ds, ds_smem), k_smem, dq.shape) * scale

  dq = plgpu.emit_pipeline(
      step, grid=(k_ref.shape[1] // BLOCK,), max_concurrent_steps=2,
      init_carry=regs.cast(jnp.zeros((BLOCK, head_dim), jnp.float32), plgpu.Layout.WGMMA),
      in_specs=[_spec((BLOCK, head_dim), lambda j: (j, 0)), _spec((head_dim, BLOCK), lambda j: (0, j)),
                _spec((head_dim, BLOCK), lambda j: (0, j))],
  )(k_ref.at[row], kt_ref.at[row], vt_ref.at[row])
  dq_smem[...] = dq.astype(dq_smem.dtype)
  _store([(dq_smem, dq_ref.at[row, rows])])


def _launch(body, out_type, scratch, loads, bh, blocks, interpret, name, *args):
  """Runs `body` on a (batch·heads, blocks) grid, one warpgroup each, with `loads` barriers."""
  # Lane semantics (explicit layouts), which JAX 0.11 no longer picks by default.
  params = plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane)
  return plgpu.kernel(
      functools.partial(body, interpret=bool(interpret)), out_type=out_type,
      scratch_types=[*scratch, plgpu.Barrier(num_barriers=loads)], grid=(bh, blocks),
      grid_names=("rows", "blocks"), compiler_params=params, interpret=interpret or None,
      kernel_name=name)(*args)


def _transposed(x):
  return x.transpose(0, 2, 1)


def _forward(q, k, v, seq_len, block, interpret):
  bh, padded, head_dim = q.shape
  kernel = functools.partial(_forward_kernel, seq_len=seq_len, scale=1.0 / math.sqrt(head_dim))
  tile = _tile((block, head_dim), q.dtype)
  o, lse = _launch(
      kernel, (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((bh, padded), jnp.float32)),
      [tile, _tile((block, block), q.dtype), tile, plgpu.SMEM((block,), jnp.float32)], 1,
      bh, padded // block, interpret, "dinojax_flash_forward_gpu", q, _transposed(k), v)
  return o, lse


def _backward(q, k, v, do, lse, delta, seq_len, block, interpret):
  bh, padded, head_dim = q.shape
  scale = 1.0 / math.sqrt(head_dim)
  tile, square = _tile((block, head_dim), q.dtype), _tile((block, block), q.dtype)
  stat = plgpu.SMEM((block,), jnp.float32)
  rows_of = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  dk, dv = _launch(
      functools.partial(_dkdv_kernel, scale=scale), (rows_of(k), rows_of(v)),
      [tile, tile, square, tile, tile], 2, bh, padded // block, interpret, "dinojax_flash_dkdv_gpu",
      q, _transposed(q), k, v, do, _transposed(do), lse, delta)
  dq = _launch(
      functools.partial(_dq_kernel, seq_len=seq_len, scale=scale), rows_of(q),
      [tile, tile, stat, stat, square, tile], 4, bh, padded // block, interpret,
      "dinojax_flash_dq_gpu", q, do, lse, delta, k, _transposed(k), _transposed(v))
  return dq, dk, dv


_flash = differentiable(_forward, _backward)


def flash_attention_gpu(q: jax.Array, k: jax.Array, v: jax.Array,
                        interpret: bool | None = None) -> jax.Array:
  """softmax(q kᵀ / √d) v for (B, T, heads, head_dim) bf16 or fp16 inputs, same layout out, as
  Mosaic GPU kernels (Hopper). `interpret` defaults to True off GPU (Mosaic GPU's interpreter)."""
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"The Mosaic GPU kernels take bf16 or fp16 inputs (wgmma), got {q.dtype}.")
  if q.shape[-1] % 64:
    raise ValueError(f"The Mosaic GPU kernels need a head dim that is a multiple of 64, got {q.shape[-1]}.")
  if interpret is None:
    interpret = target_platform() != "gpu"
  return _flash(q, k, v, BLOCK, _interpreter() if interpret else False)


def _interpreter():
  # Mosaic GPU's interpreter is not exported from jax.experimental yet; imported only when used, so a
  # JAX that moves it breaks the CPU tests, not the GPU kernels.
  from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
  return InterpretGPUParams()
