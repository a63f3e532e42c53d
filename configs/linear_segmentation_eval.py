"""mIoU of a released DINOv2 semantic segmentation head (the paper's Table 11: "linear" and "+ms"
heads on ADE20k and VOC2012), in the official test protocol (see `dinojax/evaluators/linear_segmentation.py`).

  python -m dinojax.main --config configs/linear_segmentation_eval.py:ade20k,backbone=vitl14 \
      --workdir workdir/seg_ade_l14 --config.data.source=folder:data/ade \
      --config.backbone.checkpoint=dinov2_vitl14_pretrain.pth \
      --config.head.checkpoint=dinov2_vitl14_ade20k_linear_head.pth
  python -m dinojax.main --config configs/linear_segmentation_eval.py:voc,backbone=vits14,ms \
      --workdir workdir/seg_voc_s14_ms --config.data.source=folder:data/VOCdevkit/VOC2012 \
      --config.backbone.checkpoint=dinov2_vits14_pretrain.pth \
      --config.head.checkpoint=dinov2_vits14_voc2012_ms_head.pth

Arguments: the benchmark (`ade20k`: 150 classes; `voc`: VOC2012's 21 with background), the
backbone (`vits14` ... `vitg14`; the released heads sit on the backbones without registers), `ms`
for the "+ms" heads (the last 4 blocks, 5 test scales and flips; the "linear" heads read the last
block at one scale), `tiny` for a CPU smoke run with random weights. Data: mmseg's folder layout
(`folder:<root>`, the same as `talk2dino_eval`'s) or TFDS (`tfds:scene_parse150` for ADE20k).
"""

import ml_collections

from dinojax import parallel
from dinojax.config_args import parse_arg
from dinojax.evaluators.linear_segmentation import MS_RATIOS


def get_config(arg=None):
  arg = parse_arg(arg, benchmark="ade20k", backbone="vitl14", ms=False, tiny=False)
  if arg.benchmark not in ("ade20k", "voc"):
    raise ValueError(f"The released heads are for 'ade20k' and 'voc' (VOC2012), not {arg.benchmark!r}.")
  c = ml_collections.ConfigDict()
  c.job = "linear_segmentation_eval"
  c.seed = 0  # random weights where no checkpoint is given
  c.benchmark = arg.benchmark
  c.data = ml_collections.ConfigDict(dict(source="folder:data", split="validation", image_key="image",
                                          mask_key="annotation"))
  c.backbone = ml_collections.ConfigDict(dict(name=arg.backbone, checkpoint="", overrides={}))
  # The blocks a head reads come from its checkpoint; `layers` only shapes a random head.
  c.head = ml_collections.ConfigDict(dict(checkpoint="", layers=4 if arg.ms else 1))
  c.segment = ml_collections.ConfigDict(dict(
      ratios=MS_RATIOS if arg.ms else (1.0,), flip=arg.ms,
      short_side=512, long_side=2048, window=512, stride=341))
  c.batch_size = 8  # windows per step (over this host's devices)
  c.max_images = 0  # 0: the whole split
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
  c.sharding_rules = parallel.DEFAULT_RULES
  if arg.tiny:
    return tiny(c)
  return c


def tiny(c):
  """Seconds on a CPU: a random 4-block backbone and head, 56-px windows."""
  c.backbone.overrides = dict(embed_dim=32, depth=4, num_heads=2, img_size=56)
  c.segment.update(short_side=56, long_side=224, window=56, stride=28)
  if len(c.segment.ratios) > 1:
    c.segment.ratios = (1.0, 1.32)
  return c
