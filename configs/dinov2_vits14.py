"""ViT-S/14 trained from scratch with the default DINOv2 recipe (`ssl_default_config.yaml`).

The released ViT-S/14 was distilled from ViT-g/14 (see the distillation config); this is the
from-scratch counterpart for smaller budgets. `:tiny` gives the CPU config of the README: a small ViT
on the offline digits set, a few hundred steps, with k-NN evaluation.
"""

from dinojax.config_defaults import TINY_VIT, dinov2_ssl
from dinojax.config_args import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, tiny=False)
  c = dinov2_ssl()
  c.model.update(variant="vit_small", patch_size=14, img_size=224, drop_path_rate=0.1, ffn="mlp")
  c.crops.local_size = 98  # a multiple of the 14-px patch, as the official /14 recipes
  if arg.tiny:
    return tiny(c)
  c.loss_group = 64  # the official 64 images per GPU (× 16 GPUs = batch 1024)
  return c


def tiny(c):
  """Minutes on 2 CPU cores: 32 px digits, 4-px patches, 4 blocks, 2 local crops of 16 px."""
  c.model.update(variant=None, drop_path_rate=0.0, **TINY_VIT)
  # 128 prototypes: 1,437 training digits cannot spread over 512 clusters in a few epochs.
  c.dino.head.update(prototypes=128, bottleneck_dim=64, hidden_dim=256)
  c.ibot.head.update(prototypes=128, bottleneck_dim=64, hidden_dim=256)
  # Locals of 25-60 % of the digit: the default 5-32 % of a 32-px upsampled 8x8 scan is a stroke
  # fragment that no view of the teacher can predict.
  c.crops.update(global_size=32, local_size=16, local_number=2, local_scale=(0.25, 0.6))
  # KoLeo 0.5 (default 0.1): a random ViT's CLS features are nearly collinear (mean cosine 0.98
  # between digits); spreading them is what lifts k-NN within 300 steps.
  c.dino.koleo_weight = 0.5
  c.batch_size = 64
  c.steps_per_epoch = 25
  # Short run: the default base lr (peak 1e-3 at batch 64) with a one-epoch warmup.
  c.optim.update(epochs=12, warmup_epochs=1, base_lr=0.004, freeze_last_layer_epochs=0)
  # Those collinear features give centred targets that are uniform at τ_t = 0.04 (entropy ≈ log K);
  # a fixed τ_t = 0.02 sharpens the small differences into targets. Momentum 0.98: in 300 steps the
  # EMA must follow the student within tens of steps.
  c.teacher.update(warmup_temp=0.02, temp=0.02, momentum=0.98)
  c.data.update(source="digits", split="train", threads=2)
  c.eval.update(every=100, source="digits", train_split="train", heldout_split="heldout",
                batch_size=128)
  c.checkpoint.update(every=100, keep=2)
  c.log_every = 10
  c.mesh.update(data=-1, fsdp=1, model=1)
  return c
