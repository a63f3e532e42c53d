"""Attention implementations on DINOv2's sequence lengths: forward and forward+backward time and
achieved TFLOP/s of `pallas`, `cudnn`, `chunked` and `xla`, measured in the same run.

  python bench/attention.py                                 # GPU: B=32, heads 16, T in 54..4096, bf16
  python bench/attention.py --batch 1 --heads 2 --lengths 54,261 --dtype float32   # CPU smoke run
  python bench/attention.py --batch 2 --heads 12 --lengths 257,1029 --dtype float32 --impls xla,chunked

FLOPs: 4·B·H·T²·D forward (QKᵀ and PV), 2.5× that for forward+backward (FlashAttention's count).
On CPU the Pallas kernel runs in interpret mode, so its CPU time says nothing about GPU speed.
"""

import argparse
import time

import jax
import jax.numpy as jnp

from dinojax.ops import attention


def _time(fn, *args, iters=10):
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(iters):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / iters


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--heads", type=int, default=16)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--lengths", default="54,261,1374,4096")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--iters", type=int, default=10)
  parser.add_argument("--impls", default="", help="comma-separated; default: all for the platform")
  args = parser.parse_args()
  impls = args.impls.split(",") if args.impls else (
      ["pallas", "chunked", "xla"] + (["cudnn"] if jax.default_backend() == "gpu" else []))
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), dtype {args.dtype}, "
        f"B={args.batch}, heads={args.heads}, head_dim={args.head_dim}")
  print("T | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s")
  for t in (int(x) for x in args.lengths.split(",")):
    shape = (args.batch, t, args.heads, args.head_dim)
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, shape, jnp.dtype(args.dtype)) for key in keys)
    flops = 4 * args.batch * args.heads * t * t * args.head_dim
    for impl in impls:
      fwd = jax.jit(lambda q, k, v, impl=impl: attention.dot_product_attention(q, k, v, impl))
      loss = lambda q, k, v, impl=impl: attention.dot_product_attention(q, k, v, impl).astype(jnp.float32).sum()
      fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
      t_f, t_fb = _time(fwd, q, k, v, iters=args.iters), _time(fwd_bwd, q, k, v, iters=args.iters)
      print(f"{t} | {impl} | {1e3 * t_f:.3f} | {flops / t_f / 1e12:.2f} | {1e3 * t_fb:.3f} | "
            f"{2.5 * flops / t_fb / 1e12:.2f}")


if __name__ == "__main__":
  main()
