"""Talk2DINO mIoU on an open-vocabulary segmentation benchmark, as the paper's Table 2.

  python -m dinojax.main --config configs/talk2dino_eval.py:voc --workdir workdir/eval_voc \
      --config.data.source=folder:data/VOCdevkit/VOC2012 \
      --config.model.backbone_checkpoint=dinov2_vitb14_reg4_pretrain.pth \
      --config.model.clip_checkpoint=clip-vit-base-patch16.safetensors \
      --config.model.projection=vitb_mlp_infonce.pth

Arguments: the benchmark (`voc`, `voc20`, `context`, `context59`, `coco_object`, `coco_stuff`,
`cityscapes`, `ade20k`, or `custom` for your own images/ + masks/ folder with
`--config.dataset.classes`), `backbone=vitl14_reg` for the ViT-L model, `tiny` for a CPU smoke run.
Settings are the official evaluation configs' (`src/open_vocabulary_segmentation/configs/<task>/`):
short side 448, 448 windows at stride 224, the seven ImageNet prompts, PAMR, and the background
threshold and cleaning of the background benchmarks.
"""

import dataclasses

import ml_collections

from dinojax import parallel
from dinojax.config_args import parse_arg
from dinojax.data import segmentation

# Official background settings (ViT-B / ViT-L thresholds); the other benchmarks have no background.
_BACKGROUND = {"voc": dict(threshold=(0.55, 0.54), cleaning=True),
               "context": dict(threshold=(0.55, 0.54), cleaning=False),
               "coco_object": dict(threshold=(0.55, 0.54), cleaning=True)}


def get_config(arg=None):
  arg = parse_arg(arg, benchmark="voc", backbone="vitb14_reg", tiny=False)
  if arg.benchmark != "custom" and arg.benchmark not in segmentation.BENCHMARKS:
    raise ValueError(f"Unknown benchmark {arg.benchmark!r}; choose one of "
                     f"{sorted(segmentation.BENCHMARKS)} or 'custom'.")
  c = ml_collections.ConfigDict()
  c.job = "talk2dino_eval"
  c.seed = 0
  benchmark = segmentation.BENCHMARKS.get(arg.benchmark, segmentation.Benchmark(classes=()))
  c.dataset = ml_collections.ConfigDict(dataclasses.asdict(benchmark))
  c.class_names_file = ""  # one class a line, synonyms separated by ";" (replaces dataset.classes)
  # folder:<dataset root in mmseg's layout> or tfds:<name> (with split and feature names).
  c.data = ml_collections.ConfigDict(dict(source="folder:data", split="validation", image_key="image",
                                          mask_key="annotation"))

  c.model = ml_collections.ConfigDict(dict(
      backbone=arg.backbone, backbone_checkpoint="", clip_checkpoint="", projection="",
      projection_config="", backbone_overrides={}, text_overrides={}))
  background = _BACKGROUND.get(arg.benchmark, dict(threshold=(0.4, 0.4), cleaning=False))
  large = arg.backbone.startswith("vitl")
  c.segment = ml_collections.ConfigDict(dict(
      short_side=448, window=448, stride=224, templates="sub_imagenet", pamr=True,
      background_threshold=background["threshold"][large], background_cleaning=background["cleaning"],
      lambda_bg=0.2))

  c.batch_size = 8  # windows per step (over this host's devices)
  c.max_images = 0  # 0: the whole split
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
  c.sharding_rules = parallel.DEFAULT_RULES
  if arg.tiny:
    return tiny(c)
  return c


def tiny(c):
  """Seconds on a CPU: random small backbone and text tower, 56-px windows."""
  c.model.update(backbone="vits14_reg", backbone_overrides=dict(embed_dim=32, depth=2, num_heads=2,
                                                                img_size=56),
                 text_overrides=dict(width=32, depth=1, num_heads=2, embed_dim=16))
  c.segment.update(short_side=56, window=56, stride=28, pamr=False)
  c.batch_size = 8
  return c
