"""Linear evaluation of a frozen DINOv2 backbone on ImageNet-1k, with the official settings
(`dinov2/eval/linear.py`): 10 epochs of 1250 iterations at 128 images per GPU on 8 GPUs, a grid of 13
learning rates × {last 1, last 4 blocks} × {CLS only, CLS + mean patch token}.

  python -m dinojax.main --config configs/linear_eval.py:vitl14_reg --workdir workdir/linear_l14 \
      --config.backbone.checkpoint=dinov2_vitl14_reg4_pretrain.pth
  python -m dinojax.main --config configs/linear_eval.py --workdir workdir/linear_mine \
      --config.backbone.workdir=workdir/ssl_vitl14      # the teacher of your own SSL run

The argument names the released backbone (`vits14`, `vitb14_reg`, ...; default `vitl14_reg`); with
`backbone.workdir` the architecture comes from that run instead. `:tiny` is a CPU run of minutes on
the offline digits (a random frozen backbone unless `backbone.workdir` names a tiny SSL run).
"""

import ml_collections

from dinojax import parallel
from dinojax.config_args import parse_arg
from dinojax.config_defaults import OFFICIAL_EPOCH_LENGTH, TINY_VIT, frozen_backbone, profile

# The official grid of base learning rates (scaled by the global batch / 256).
LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)


def get_config(arg=None):
  arg = parse_arg(arg, backbone="vitl14_reg", tiny=False)
  c = ml_collections.ConfigDict()
  c.job = "linear_eval"
  c.seed = 0

  c.backbone = frozen_backbone(arg.backbone)  # see config_defaults.frozen_backbone
  c.image_size = 224

  c.data = ml_collections.ConfigDict(dict(source="tfds:imagenet2012", train_split="train",
                                          val_split="validation", threads=16))
  # (source, split) pairs scored at the end by the classifier chosen on val_split (the official
  # --test-datasets), e.g. (("tfds:imagenet_v2", "test"),).
  c.data.test_sets = ()
  c.linear = ml_collections.ConfigDict(dict(
      learning_rates=LEARNING_RATES, n_last_blocks=(1, 4), avgpool=(False, True), momentum=0.9,
      crop_scale=(0.08, 1.0)))  # RandomResizedCrop's default area range

  c.batch_size = 1024  # global: the official 128 per GPU on one 8-GPU node
  c.epochs = 10
  c.steps_per_epoch = OFFICIAL_EPOCH_LENGTH
  c.total_steps = 0  # 0: epochs × steps_per_epoch
  c.eval = ml_collections.ConfigDict(dict(every=OFFICIAL_EPOCH_LENGTH, batch_size=256))
  c.checkpoint = ml_collections.ConfigDict(dict(every=OFFICIAL_EPOCH_LENGTH, keep=2))
  c.log_every = 10
  c.profile = profile()

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
  c.sharding_rules = parallel.DEFAULT_RULES
  if arg.tiny:
    return tiny(c)
  return c


def tiny(c):
  """Under a minute on 2 CPU cores: 32-px digits, the tiny SSL model's architecture (random weights
  unless `backbone.workdir` names a run), 300 steps."""
  c.backbone.update(name="", dtype="float32", model=ml_collections.ConfigDict(TINY_VIT))
  c.image_size = 32
  c.data.update(source="digits", train_split="train", val_split="heldout", threads=2)
  c.linear.crop_scale = (0.6, 1.0)  # a tenth of an 8×8 digit is a stroke fragment
  c.batch_size = 64
  c.epochs = 12
  c.steps_per_epoch = 25
  c.eval.update(every=100, batch_size=128)
  c.checkpoint.update(every=100, keep=2)
  return c
