"""k-NN evaluation of a frozen DINOv2 backbone on ImageNet-1k with the official settings
(`dinov2/eval/knn.py`): CLS features of the evaluation crop (resize 256, centre 224), cosine
similarity, k = 10, 20, 100, 200 neighbours voting with weight exp(similarity / 0.07); few-shot with
`--config.knn.n_per_class='(-1, 1, 10)' --config.knn.n_tries=5`.

  python -m dinojax.main --config configs/knn_eval.py:vitl14_reg --workdir workdir/knn_l14 \
      --config.backbone.checkpoint=dinov2_vitl14_reg4_pretrain.pth
  python -m dinojax.main --config configs/knn_eval.py:tiny --workdir workdir/knn_tiny \
      --config.backbone.workdir=workdir/ssl_tiny          # the teacher of the README's run

The argument names the released backbone (default `vitl14_reg`); `backbone.*` is the section of the
linear evaluation (a released checkpoint, a dinojax run's `workdir`, or random weights).
`:tiny` runs in seconds on a CPU on the offline digits.
"""

import ml_collections

from dinojax import parallel
from dinojax.config_args import parse_arg
from dinojax.config_defaults import TINY_VIT, frozen_backbone


def get_config(arg=None):
  arg = parse_arg(arg, backbone="vitl14_reg", tiny=False)
  c = ml_collections.ConfigDict()
  c.job = "knn_eval"
  c.seed = 0
  c.backbone = frozen_backbone(arg.backbone)
  c.image_size = 224
  c.data = ml_collections.ConfigDict(dict(source="tfds:imagenet2012", train_split="train",
                                          val_split="validation"))
  # n_per_class: the training images each k-NN sees, -1 all of them, n > 0 that many per class (the
  # official --n-per-class-list: k ≤ n and n itself, the mean of n_tries random draws).
  c.knn = ml_collections.ConfigDict(dict(k=(10, 20, 100, 200), temperature=0.07, n_per_class=(-1,),
                                         n_tries=1))
  c.batch_size = 256  # global, for feature extraction
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
  c.sharding_rules = parallel.DEFAULT_RULES
  if arg.tiny:
    return tiny(c)
  return c


def tiny(c):
  """Seconds on 2 CPU cores: 32-px digits, the tiny SSL model's architecture (random weights unless
  `backbone.workdir` names a run), k = 20 as the SSL run's own evaluation."""
  c.backbone.update(name="", dtype="float32", model=ml_collections.ConfigDict(TINY_VIT))
  c.image_size = 32
  c.data.update(source="digits", train_split="train", val_split="heldout")
  c.knn.k = (10, 20)
  c.batch_size = 128
  return c
