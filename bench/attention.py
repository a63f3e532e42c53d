"""Attention implementations on DINOv2's sequence lengths: forward and forward+backward time,
achieved TFLOP/s and error against an fp32 reference, measured in the same run.

  python bench/attention.py                                 # GPU: B=32, heads 16, T in 54..4096, bf16
  python bench/attention.py --batch 1 --heads 2 --lengths 54,261 --dtype float32   # CPU smoke run
  python bench/attention.py --batch 2 --heads 12 --lengths 257,1029 --dtype float32 --impls xla,chunked
  python bench/attention.py --topology v5e:2x2 --batch 8 --lengths 54,261,1374   # compile for a TPU

Rows: `pallas` is what `attention="pallas"` runs on this platform (Mosaic GPU on Hopper for bf16,
Mosaic TPU on TPU); `pallas-triton` is the portable kernel set on GPU; `cudnn` is
`jax.nn.dot_product_attention`'s cuDNN kernel; `chunked` the reference a head and query chunk at
a time; `xla` the einsum reference. The error columns are
the largest absolute difference from XLA in fp32 (output; and dQ, dK, dV of sum(output · dO)), so
a fast row that is wrong shows it. FLOPs: 4·B·H·T²·D forward (QKᵀ and PV), 2.5× that for
forward+backward (FlashAttention's count). On CPU the Pallas kernels run in interpret mode, so
their CPU time says nothing about GPU speed.

`--topology` compiles `pallas` (the Mosaic TPU kernels) and `xla` for one chip of that TPU slice
ahead of time, from a host without TPUs, and prints what the compiler reports instead of times:
whether each compiles, XLA's FLOP count (a Pallas kernel's work is invisible to it) and the
temporary memory the program needs on the chip. It needs libtpu installed, not a TPU. libtpu 0.0.42
crashes (stack overflow) compiling the `xla` reference at T = 4096 with B = 8: use B = 2 there.
"""

import argparse
from functools import partial
import time
import traceback

import jax
import jax.numpy as jnp

from dinojax.ops import attention
from dinojax.ops.flash_attention import flash_attention


def _time(fn, *args, iters=10):
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(iters):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / iters


def _implementations(names):
  impls = {name: partial(attention.dot_product_attention, attention=name)
           for name in ("pallas", "chunked", "xla")}
  if jax.default_backend() == "gpu":
    impls["pallas-triton"] = flash_attention
    impls["cudnn"] = partial(attention.dot_product_attention, attention="cudnn")
  unknown = set(names) - set(impls)
  if unknown:
    raise SystemExit(f"Unknown --impls {sorted(unknown)}; on this platform: {sorted(impls)}.")
  return {name: impl for name, impl in impls.items() if not names or name in names}


def _max_error(got, want):
  return max(float(jnp.abs(g.astype(jnp.float32) - w).max()) for g, w in zip(got, want))


def compile_for_tpu(topology: str, args):
  from jax.experimental import topologies
  device = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices[0]
  # Traced on this CPU host; a mesh of the TPU chip makes the attention's choices (kernels) for TPU.
  mesh = jax.sharding.Mesh([device], ("chip",))
  print(f"device: {device.device_kind} (compiled ahead of time, not run), dtype {args.dtype}, "
        f"B={args.batch}, heads={args.heads}, head_dim={args.head_dim}")
  print("T | impl | pass | compiles | XLA GFLOP | temp MiB")
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  for t in (int(x) for x in args.lengths.split(",")):
    spec = jax.ShapeDtypeStruct((args.batch, t, args.heads, args.head_dim), jnp.dtype(args.dtype),
                                sharding=sharding)
    for name in [n for n in args.impls.split(",") if n] or ["pallas", "xla"]:
      impl = partial(attention.dot_product_attention, attention=name)
      passes = {"fwd": impl, "fwd+bwd": lambda q, k, v, do, impl=impl: jax.vjp(impl, q, k, v)[1](do)}
      for kind, fn in passes.items():
        specs = (spec,) * (3 if kind == "fwd" else 4)
        try:
          with jax.set_mesh(mesh):
            compiled = jax.jit(fn).lower(*specs).compile()
        except Exception as e:  # one failure must not hide the other rows
          print(f"{t} | {name} | {kind} | no: {type(e).__name__}: {str(e)[:300]}", flush=True)
          continue
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
        print(f"{t} | {name} | {kind} | yes | {cost.get('flops', 0) / 1e9:.2f} | {temp:.1f}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--heads", type=int, default=16)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--lengths", default="54,261,1374,4096")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--iters", type=int, default=10)
  parser.add_argument("--impls", default="", help="comma-separated; default: all for the platform")
  parser.add_argument("--topology", default="", help="compile for this TPU slice's chip, e.g. v5e:2x2")
  args = parser.parse_args()
  if args.topology:
    return compile_for_tpu(args.topology, args)
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}), dtype {args.dtype}, "
        f"B={args.batch}, heads={args.heads}, head_dim={args.head_dim}")
  print("T | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | fwd error | grad error")
  for t in (int(x) for x in args.lengths.split(",")):
    shape = (args.batch, t, args.heads, args.head_dim)
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, do = (jax.random.normal(key, shape, jnp.dtype(args.dtype)) for key in keys)
    exact = [x.astype(jnp.float32) for x in (q, k, v, do)]
    xla = partial(attention.dot_product_attention, attention="xla")
    want_out = jax.jit(xla)(*exact[:3])
    want_grads = jax.jit(lambda q, k, v, do: jax.vjp(xla, q, k, v)[1](do))(*exact)
    flops = 4 * args.batch * args.heads * t * t * args.head_dim
    for name, impl in _implementations([n for n in args.impls.split(",") if n]).items():
      fwd = jax.jit(impl)
      grads = jax.jit(lambda q, k, v, do, impl=impl: jax.vjp(impl, q, k, v)[1](do))
      try:
        t_f, t_fb = _time(fwd, q, k, v, iters=args.iters), _time(grads, q, k, v, do, iters=args.iters)
      except Exception as e:  # One implementation failing to compile must not hide the others' rows.
        traceback.print_exc()
        print(f"{t} | {name} | failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        continue
      fwd_error = _max_error([fwd(q, k, v)], [want_out])
      grad_error = _max_error(grads(q, k, v, do), want_grads)
      print(f"{t} | {name} | {1e3 * t_f:.3f} | {flops / t_f / 1e12:.2f} | {1e3 * t_fb:.3f} | "
            f"{2.5 * flops / t_fb / 1e12:.2f} | {fwd_error:.2e} | {grad_error:.2e}", flush=True)


if __name__ == "__main__":
  main()
