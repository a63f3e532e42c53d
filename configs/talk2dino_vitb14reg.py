"""Talk2DINO ViT-B: ψ from CLIP ViT-B/16 text into DINOv2 ViT-B/14-reg patch space, trained on COCO
Captions (the official `configs/vitb_mlp_infonce.yaml` and `train.py` defaults).

  python -m dinojax.main --config configs/talk2dino_vitb14reg.py --workdir workdir/talk2dino \
      --config.model.backbone_checkpoint=dinov2_vitb14_reg4_pretrain.pth \
      --config.model.clip_checkpoint=clip-vit-base-patch16.safetensors

The official recipe: frozen backbone and text tower, ψ = linear → tanh → linear (768-d), Adam at a
constant 1e-4 (no weight decay, warmup or clipping), batch 128, 100 epochs over the 414,113 COCO
train2014 captions, InfoNCE at temperature 0.07 (not learned), images resized to 448 (short side) and
centre-cropped to 448. The trained ψ is written to `<workdir>/projection.safetensors`, usable as
`--projection` of `python -m dinojax.segment` and the `talk2dino_eval` job.

`:tiny` is a CPU run of minutes: random small towers on the offline digit captions.
"""

import math

import ml_collections

from dinojax import parallel
from dinojax.config_args import parse_arg
from dinojax.config_defaults import profile

COCO_TRAIN2014_CAPTIONS = 414_113


def get_config(arg=None):
  arg = parse_arg(arg, tiny=False)
  c = ml_collections.ConfigDict()
  c.job = "talk2dino"
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      backbone="vitb14_reg", backbone_checkpoint="", clip_checkpoint="", backbone_overrides={},
      text_overrides={}))
  c.projection = ml_collections.ConfigDict(dict(hidden_layers=1, act="tanh"))
  c.temperature = 0.07
  c.image_size = 448

  c.optim = ml_collections.ConfigDict(dict(lr=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8,
                                           epochs=100))
  c.batch_size = 128
  # The official epoch is one pass over the captions (each caption a sample); ours draws one caption
  # per image visit, so an epoch is counted in captions to give the same number of updates.
  c.steps_per_epoch = math.ceil(COCO_TRAIN2014_CAPTIONS / 128)
  c.total_steps = 0  # 0: optim.epochs × steps_per_epoch
  c.data = ml_collections.ConfigDict(dict(source="tfds:coco_captions", split="train", threads=16))
  c.checkpoint = ml_collections.ConfigDict(dict(every=2000, keep=3))
  c.log_every = 50
  c.profile = profile()

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
  c.mesh_dcn = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "model": 1})
  c.sharding_rules = parallel.DEFAULT_RULES
  if arg.tiny:
    return tiny(c)
  return c


def tiny(c):
  """32-px digits through random towers: a 2-block ViT with 16-px patches (smaller patches average
  into near-identical random features) and a 2-block text tower; a 10× lr to learn in minutes."""
  c.model.update(backbone="vits14_reg", backbone_overrides=dict(embed_dim=48, depth=2, num_heads=3,
                                                                patch_size=16, img_size=32),
                 text_overrides=dict(width=64, depth=2, num_heads=2, embed_dim=64, context_length=24))
  c.image_size = 32
  c.optim.update(lr=1e-3, epochs=8)
  c.batch_size = 32
  c.steps_per_epoch = 25
  c.data.update(source="digits", split="train", threads=2)
  c.checkpoint.update(every=50, keep=2)
  c.log_every = 10
  return c
