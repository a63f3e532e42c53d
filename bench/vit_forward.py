"""ViT forward throughput: dinojax (jitted) vs the PyTorch reference (`transformers` Dinov2Model),
same weights, same input, measured in the same run.

  python bench/vit_forward.py                       # ViT-S/14 and ViT-B/14, 224 px, batch 8
  python bench/vit_forward.py --models vitl14 --batch 64 --dtype bfloat16   # on a GPU

Prints images/s for each and the ratio dinojax / PyTorch (> 1 means dinojax is faster), plus peak
accelerator memory where the backend reports it.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import Dinov2Config, Dinov2Model

from dinojax import convert

_ARCH = {"vits14": (384, 12, 6), "vitb14": (768, 12, 12), "vitl14": (1024, 24, 16), "vitg14": (1536, 40, 24)}


def _time(fn, iters: int, warmup: int = 2) -> float:
  for _ in range(warmup):
    fn()
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - start) / iters


def bench_one(name: str, batch: int, size: int, dtype: str, iters: int) -> dict:
  dim, depth, heads = _ARCH[name]
  cfg = Dinov2Config(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads, patch_size=14,
                     image_size=518, use_swiglu_ffn=name == "vitg14")
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  reference = Dinov2Model(cfg).eval().to(device=device, dtype=torch_dtype)
  sd = {k: v.float().cpu().numpy() for k, v in reference.state_dict().items()}
  model, params = convert.from_state_dict(sd, num_heads=heads, dtype=jnp.dtype(dtype),
                                          attention="cudnn" if jax.default_backend() == "gpu" else "xla")
  params = jax.device_put(params)

  x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
  x_jax = jnp.asarray(x)
  forward = jax.jit(lambda p, im: model.apply(p, im)["x_norm_clstoken"])
  t_jax = _time(lambda: forward(params, x_jax).block_until_ready(), iters)

  x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).to(device=device, dtype=torch_dtype)

  def torch_forward():
    with torch.inference_mode():
      reference(x_torch).pooler_output
    if device == "cuda":
      torch.cuda.synchronize()

  t_torch = _time(torch_forward, iters)
  row = {"model": name, "batch": batch, "size": size, "dtype": dtype,
         "dinojax img/s": batch / t_jax, "pytorch img/s": batch / t_torch, "ratio": t_torch / t_jax}
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    row["dinojax peak GiB"] = stats["peak_bytes_in_use"] / 2**30
  if device == "cuda":
    row["pytorch peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="vits14,vitb14")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--iters", type=int, default=10)
  args = parser.parse_args()
  print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"torch threads: {torch.get_num_threads()}")
  rows = [bench_one(m, args.batch, args.size, args.dtype, args.iters) for m in args.models.split(",")]
  cols = list(dict.fromkeys(k for r in rows for k in r))
  print(" | ".join(cols))
  for r in rows:
    print(" | ".join(f"{r[c]:.2f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols))


if __name__ == "__main__":
  main()
