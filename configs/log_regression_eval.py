"""Logistic-regression evaluation of a frozen DINOv2 backbone with the official settings
(`dinov2/eval/log_regression.py`): CLS features of the resize-224 / centre-224 crop, 45 values of C
from 1e-6 to 1e5, L-BFGS in float64 (1000 iterations, tolerance 1e-12), C chosen on a random tenth
of the training split (or the dataset's own fine-tuning split), then refitted on both.

  python -m dinojax.main --config configs/log_regression_eval.py:vitl14_reg --workdir workdir/lr_food \
      --config.backbone.checkpoint=dinov2_vitl14_reg4_pretrain.pth \
      --config.data.source=tfds:food101 --config.data.val_split=validation
  python -m dinojax.main --config configs/log_regression_eval.py:tiny --workdir workdir/lr_tiny \
      --config.backbone.workdir=workdir/ssl_tiny          # the teacher of the README's run

The paper's other benchmarks are TFDS datasets too (`cifar10`, `cifar100`, `sun397`, `cars196`,
`dtd`, `oxford_iiit_pet`, `oxford_flowers102`, `caltech101`: test split `test`); Pets, Flowers and
Caltech-101 are scored by `log_regression.metric=mean_per_class_accuracy`, and a dataset with a
validation split chooses C on it with `data.finetune_split=validation`. The argument names the
released backbone (default `vitl14_reg`); `backbone.*` is the section of the linear evaluation.
float64 needs a CPU or GPU; on a TPU set `log_regression.dtype=float32`. `:tiny` runs in under a
minute on a CPU on the offline digits.
"""

import ml_collections

from dinojax import parallel
from dinojax.config_args import parse_arg
from dinojax.config_defaults import TINY_VIT, frozen_backbone


def get_config(arg=None):
  arg = parse_arg(arg, backbone="vitl14_reg", tiny=False)
  c = ml_collections.ConfigDict()
  c.job = "log_regression_eval"
  c.seed = 0  # the held-out tenth of the training split
  c.backbone = frozen_backbone(arg.backbone)
  c.image_size = 224
  c.data = ml_collections.ConfigDict(dict(
      source="tfds:imagenet2012", train_split="train", val_split="validation",
      finetune_split="",  # "": a random tenth of train_split chooses C
      resize_size=0))  # 0: image_size, this evaluation's official transform (resize 224, crop 224)
  c.log_regression = ml_collections.ConfigDict(dict(
      c_powers=(-6, 5, 45),  # C = 10^linspace(-6, 5, 45)
      max_iter=1000, tol=1e-12, dtype="float64",
      metric="mean_accuracy",  # or mean_per_class_accuracy
      finetune_on_val=False))  # without a fine-tuning split: choose C on val_split instead
  c.batch_size = 256  # global, for feature extraction
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
  c.sharding_rules = parallel.DEFAULT_RULES
  if arg.tiny:
    return tiny(c)
  return c


def tiny(c):
  """Under a minute on 2 CPU cores: 32-px digits, the tiny SSL model's architecture (random weights
  unless `backbone.workdir` names a run), the official sweep."""
  c.backbone.update(name="", dtype="float32", model=ml_collections.ConfigDict(TINY_VIT))
  c.image_size = 32
  c.data.update(source="digits", train_split="train", val_split="heldout")
  c.batch_size = 128
  return c
