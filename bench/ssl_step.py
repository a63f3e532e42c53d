"""DINOv2 SSL train-step throughput, model FLOPs utilisation, and multi-crop data throughput.

  python bench/ssl_step.py                                  # CPU: ViT-S/14, official crops, batch 2
  python bench/ssl_step.py --config configs/dinov2_vitl14.py --batch 64 --steps 20 --data cached \
      --set 'profile.steps=(4,7)'                           # one H100/H200, with its top kernels

Runs the real trainer (`dinojax.trainers.ssl.run`) for a few steps with synthetic-free real data
(the offline digits set, resized by the crops) and reads its step times; the first steps (compile,
warm-up) are dropped. MFU = model FLOPs (student forward+backward = 3× forward on all crops, teacher
forward on the global crops, heads ignored) / step time / peak FLOP/s of the devices, with the
student's blocks counted only for the samples stochastic depth computes (official ViT-L/g: drop
path 0.4 on every block, so ~60 %); "MFU (no drop)" counts every sample, as if nothing were dropped.
`--data cached` serves the pipeline's first batch at every step, so the step time is the device's
alone (what MFU should measure); `--data pipeline` (the default) includes waiting for the crops.
`--set profile.steps=(start,stop)` traces those steps as a training run does (`dinojax.profile`)
and prints the top kernels.
"""

import argparse
import os
import tempfile
import time

import jax
import numpy as np

from dinojax import config_args, loop, student_teacher
from dinojax.data import sources
from dinojax.data.multi_crop import MultiCrop
from dinojax.models.vit import VARIANTS, drop_path_rates, ffn_hidden_dim, stochastic_depth_keep
from dinojax.trainers import ssl
import trace_summary  # bench/, beside this script

# Dense bf16 peak per device, for MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v5p": 459.0, "TPU v4": 275.0}


def vit_forward_flops(dim: int, depth: int, mlp_hidden: int, ffn: str, tokens: int, patch: int,
                      block_share: float = 1.0) -> float:
  """Matmul FLOPs of one ViT forward on one image (2 per multiply-add), the blocks' residual branches
  counted for `block_share` of the images (what stochastic depth leaves computed)."""
  ffn_matmuls = 3 if ffn == "swiglu" else 2
  per_block = 2 * tokens * (4 * dim * dim + ffn_matmuls * dim * mlp_hidden) + 4 * tokens * tokens * dim
  return block_share * depth * per_block + 2 * tokens * patch * patch * 3 * dim


def kept_share(config, depth: int, crops_per_device: int) -> float:
  """Mean share of a device's `crops_per_device` samples that stochastic depth computes per branch,
  over the blocks' rates (as `vit.ViT` draws them)."""
  m, n = config.model, crops_per_device
  rates = drop_path_rates(m.get("drop_path_rate", 0.0), depth, m.get("drop_path_uniform", False))
  return float(np.mean([stochastic_depth_keep(n, r) / n for r in rates]))


def step_flops(config, executed: bool = True) -> float:
  """Model FLOPs of one step: student forward+backward (3× forward) on all crops, teacher forward on
  the global crops, heads ignored. `executed`: the student's blocks counted only for the samples
  stochastic depth keeps (what runs); else for all of them."""
  m = config.model
  arch = {**VARIANTS.get(m.variant, {}), **{k: m[k] for k in ("embed_dim", "depth") if k in m}}
  dim, depth = arch["embed_dim"], arch["depth"]
  hidden = ffn_hidden_dim(dim, m.get("mlp_ratio", 4.0), m.ffn)
  c = config.crops
  extra = 1 + m.num_register_tokens
  per_device = config.batch_size // jax.device_count()

  def flops(size, crops_per_image=None):
    share = kept_share(config, depth, crops_per_image * per_device) if executed and crops_per_image else 1.0
    return vit_forward_flops(dim, depth, hidden, m.ffn, (size // m.patch_size) ** 2 + extra, m.patch_size,
                             share)

  student = 3 * (2 * flops(c.global_size, 2) + c.local_number * flops(c.local_size, c.local_number))
  teacher = 2 * flops(c.global_size)
  return config.batch_size * (student + teacher)


def peak_flops() -> float | None:
  kind = jax.devices()[0].device_kind
  for name, tflops in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return tflops * 1e12 * jax.device_count()
  return None


def data_throughput(config, seconds: float = 5.0) -> float:
  """Multi-crop images/s on one core (PIL augmentations, official crop sizes)."""
  c = config.crops
  multi_crop = MultiCrop(c.global_size, tuple(c.global_scale), c.local_size, tuple(c.local_scale),
                         c.local_number)
  source = sources.Digits("train", size=256)
  rng, count, start = np.random.default_rng(0), 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    multi_crop(source[count % len(source)]["image"], rng)
    count += 1
  return count / (time.perf_counter() - start)


class _Wrapped:
  """An iterator over the wrapped one's batches, keeping its state (what checkpoints save)."""

  def __init__(self, iterator):
    self._iterator = iterator

  def __iter__(self):
    return self

  def get_state(self):
    return self._iterator.get_state()

  def set_state(self, state):
    self._iterator.set_state(state)


class _FirstBatchForever(_Wrapped):
  """The wrapped iterator's first batch at every step."""

  def __init__(self, iterator):
    super().__init__(iterator)
    self._first = None

  def __next__(self):
    if self._first is None:
      self._first = next(self._iterator)
    return self._first


def wrap_data(cached: bool):
  """Makes the trainer's multi-crop data cached."""
  multi_crop_data = student_teacher.multi_crop_data

  def wrapped(*args, **kwargs):
    dataset, skipped, shardings = multi_crop_data(*args, **kwargs)
    return _FirstBatchForever(iter(dataset)) if cached else iter(dataset), skipped, shardings

  student_teacher.multi_crop_data = wrapped


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/dinov2_vits14.py",
                      help="config file[:arg], as dinojax.main's --config")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--dtype", default=None, help="override model dtype (float32 on CPU by default)")
  parser.add_argument("--data", default="pipeline", choices=["pipeline", "cached"])
  parser.add_argument("--attention", default=None, help="override (xla on CPU, cudnn on GPU by default)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. --set model.drop_path_rate=0.0 (a Python literal, else a string)")
  args = parser.parse_args()

  config = config_args.load_config(args.config)
  on_cpu = jax.default_backend() == "cpu"
  config.batch_size = args.batch
  config.total_steps = args.steps
  if "loss_group" in config:  # the recipe's per-GPU batch need not divide --batch: per device
    config.loss_group = 0
  config.model.dtype = args.dtype or ("float32" if on_cpu else "bfloat16")
  config.model.attention = args.attention or ("xla" if on_cpu else "cudnn")
  config.data.update(source="digits", split="train", threads=os.cpu_count() or 2)
  config.eval.every = 0
  config.log_every = 1
  config.checkpoint.every = 10 ** 9
  config.mesh.update(data=-1, fsdp=1, model=1)
  config_args.override(config, config_args.parse_overrides(args.set))

  with tempfile.TemporaryDirectory() as workdir:
    wrap_data(args.data == "cached")
    ssl.run(config, workdir)
    times = [r["step_time_s"] for r in loop.read_metrics(workdir) if "step_time_s" in r]
    profile = trace_summary.summarise(workdir) if config.profile.steps else ""
  step_time = float(np.median(times[len(times) // 2:]))
  flops, all_flops = step_flops(config), step_flops(config, executed=False)
  peak = peak_flops()
  stats = jax.local_devices()[0].memory_stats() or {}
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, backend {jax.default_backend()}")
  print(f"data: {args.data}, attention: {config.model.attention}")
  print("model | batch | dtype | step s | img/s | TFLOP/s | MFU | MFU (no drop) | peak GiB | "
        "multi-crop img/s/core")
  print(" | ".join([
      f"{config.model.variant}/{config.model.patch_size}", str(config.batch_size), config.model.dtype,
      f"{step_time:.3f}", f"{config.batch_size / step_time:.2f}", f"{flops / step_time / 1e12:.3f}",
      f"{100 * flops / step_time / peak:.1f}%" if peak else "n/a",
      f"{100 * all_flops / step_time / peak:.1f}%" if peak else "n/a",
      f"{stats['peak_bytes_in_use'] / 2**30:.1f}" if "peak_bytes_in_use" in stats else "n/a",
      f"{data_throughput(config):.1f}"]))
  if profile:
    start, stop = config.profile.steps
    print(f"\nProfile of steps {start}-{stop - 1}:\n{profile}")


if __name__ == "__main__":
  main()
