"""DINOv2 ViT-L/14 pretraining (`dinov2/configs/train/vitl14.yaml`): SwiGLU, separate iBOT head,
131072 prototypes, Sinkhorn-Knopp centering, 500 epochs of 1250 steps at batch 1024 (32 per GPU).

  python -m dinojax.main --config configs/dinov2_vitl14.py --workdir gs://bucket/vitl14
  # then the paper's short high-resolution adaptation (§4, 518 px), from that run:
  python -m dinojax.main --config configs/dinov2_vitl14.py:high_res --workdir gs://bucket/vitl14_518 \
      --config.init_from=gs://bucket/vitl14
"""

from dinojax.config_defaults import dinov2_lvd_recipe, dinov2_ssl
from dinojax.config_args import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, high_res=False)
  c = dinov2_lvd_recipe(dinov2_ssl())
  c.model.variant = "vit_large"
  c.loss_group = 32  # the official 32 images per GPU
  c.data.source = "tfds:imagenet2012"  # the official run used ImageNet-22k
  if arg.high_res:
    high_res(c)
  return c


def high_res(c):
  """The adaptation phase: 518-px global crops (224-px local) for ~10k steps at the end of training,
  started from the low-resolution run (`--config.init_from`); the position embedding keeps its
  224-px grid and is interpolated, as at inference."""
  c.crops.update(global_size=518, local_size=224)
  c.optim.update(epochs=8, warmup_epochs=1)
  c.teacher.update(momentum=0.999, warmup_temp_epochs=0, warmup_temp=0.07)
  c.model.remat = True
