"""Patch-feature PCA of one image (the DINOv2 paper's Fig. 1), the tiny CPU default job.

  python -m dinojax.main --config configs/features_pca.py --workdir /tmp/pca
  python -m dinojax.main --config configs/features_pca.py:vitb14 --workdir /tmp/pca \
      --config.checkpoint=dinov2_vitb14_pretrain.pth --config.image=photo.jpg

The argument names the backbone (`vits14`, `vitb14_reg`, ...; default `vits14_reg`), optionally
with a shallower `depth=N` for quick CPU runs: `configs/features_pca.py:vits14_reg,depth=2`.
"""

import ml_collections

from dinojax import parallel
from dinojax.config_args import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, model="vits14_reg", depth=0)
  config = ml_collections.ConfigDict()
  config.job = "pca_features"
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = arg.model
  config.model.overrides = ml_collections.ConfigDict({"depth": arg.depth} if arg.depth else {})
  config.checkpoint = ml_collections.FieldReference(None, field_type=str)
  config.attention = "xla"

  config.image = "chelsea"   # An image path or a scikit-image sample name.
  config.resolution = 448    # Short side, rounded to a multiple of the patch size.
  config.pca = ml_collections.ConfigDict()
  config.pca.foreground_threshold = ml_collections.FieldReference(None, field_type=float)

  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
  config.sharding_rules = parallel.DEFAULT_RULES
  return config
