"""dino.txt train-step throughput with the frozen backbone vs a full CLIP-style step of the same size
(the backbone trained too: its backward pass, gradients and Adam moments), and their ratio.

  python bench/text_step.py                      # CPU: tiny and small sizes, both steps each
  python bench/text_step.py --full --batch 256   # one GPU: the ViT-L/14 recipe at 224, bf16

Runs the real trainer (`dinojax.trainers.dinotxt.run`) for a few steps on the offline digit captions
(resized to the model's input) and reads its step times; the first steps (compile, warm-up) are
dropped. Both steps run on the same machine in the same process.
"""

import argparse
import os
import tempfile

import jax
import numpy as np

from dinojax import config_args, loop
from dinojax.trainers import dinotxt

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "dinotxt_vitl14.py")


def load_config(arg=None):
  return config_args.load_config(CONFIG + (f":{arg}" if arg else ""))


def sized_config(size: str, batch: int, on_cpu: bool):
  """tiny: the `:tiny` config; small: a ViT-S/14 (registers) at 224 with a 4-layer 256-d text tower;
  full: the ViT-L/14 recipe as configured."""
  config = load_config("tiny" if size == "tiny" else None)
  if size == "small":
    config.backbone.name = "vits14_reg"
    config.embed_dim = 768  # 2 × 384: no projection, as the recipe's 2 × 1024 for ViT-L
    config.text.update(width=256, depth=4, num_heads=4, context_length=32)
  if size != "tiny":
    config.tokenizer.kind = "clip"
  dtype = "float32" if on_cpu else "bfloat16"
  attention = "xla" if on_cpu else "cudnn"
  config.backbone.update(dtype=dtype, attention=attention)
  config.text.update(dtype=dtype, attention=attention)
  config.batch_size = batch
  config.data.update(source="digits", split="train", threads=os.cpu_count() or 2)
  config.eval.every = 0
  config.log_every = 1
  config.checkpoint.every = 10 ** 9
  config.mesh.update(data=-1, fsdp=1, model=1)
  return config


def step_time(config, frozen: bool, steps: int) -> float:
  config.backbone.freeze = frozen
  config.total_steps = steps
  with tempfile.TemporaryDirectory() as workdir:
    dinotxt.run(config, workdir)
    times = [r["step_time_s"] for r in loop.read_metrics(workdir) if "step_time_s" in r]
  return float(np.median(times[len(times) // 2:]))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="tiny,small", help="comma-separated: tiny, small")
  parser.add_argument("--full", action="store_true", help="the ViT-L/14 recipe at 224 (GPU)")
  parser.add_argument("--batch", type=int, default=None, help="default: 64 tiny, 8 small, 256 full")
  parser.add_argument("--steps", type=int, default=8)
  args = parser.parse_args()
  on_cpu = jax.default_backend() == "cpu"
  sizes = ["full"] if args.full else args.sizes.split(",")
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, backend {jax.default_backend()}")
  print("size | backbone | batch | dtype | frozen step s | frozen img/s | full step s | full img/s | speed-up")
  for size in sizes:
    batch = args.batch or {"tiny": 64, "small": 8, "full": 256}[size]
    config = sized_config(size, batch, on_cpu)
    frozen, full = step_time(config, True, args.steps), step_time(config, False, args.steps)
    backbone = config.backbone.name or f"ViT {config.backbone.model.embed_dim}d×{config.backbone.model.depth}"
    print(" | ".join([size, backbone, str(batch), config.backbone.dtype, f"{frozen:.3f}",
                      f"{batch / frozen:.1f}", f"{full:.3f}", f"{batch / full:.1f}", f"{full / frozen:.2f}×"]))


if __name__ == "__main__":
  main()
