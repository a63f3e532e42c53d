"""DINOv2 distillation (Oquab et al., 2023, §5): ViT-S/14 student, frozen ViT-g/14 teacher.

The teacher comes from `--config.teacher.checkpoint=<official training checkpoint>.pth` (with
`teacher.backbone.*`, `teacher.dino_head.*`, `teacher.ibot_head.*`; architecture read from it) or
`--config.teacher.workdir=<a dinojax run of configs/dinov2_vitg14.py>`. The final model is the
student's EMA, written to `<workdir>/student_ema.safetensors` (official naming).

Published (paper, training hyperparameters table): distilled students run 625k iterations
(500 × 1250) at batch 2048 with lr 1e-3, drop path 0, warmup 100k iterations (80 epochs), weight
decay cosine 0.04 → 0.2, momentum cosine 0.994 → 1 (here the student's EMA), LayerScale 1e-5; the
§5 exceptions are in `dinojax/trainers/distill.py`.
Assumed (not published for distillation): the rest of the ViT-g recipe (`vitg14.yaml`: Sinkhorn-
Knopp, separate heads, no layer-wise decay, teacher temperature 0.04 → 0.07 over 30 epochs, the
last layer frozen for one epoch, 8 local crops of 98 px); student heads the size of the teacher's
(they must predict its prototypes); no 518-px phase (run one with `init_from` if wanted); ImageNet
as the data (the paper used LVD-142M).

Args: `student=vits14|vitb14|vitl14` (the released distilled students, all with MLP FFNs); `tiny`
for CPU: the student of `dinov2_vits14.py:tiny`'s model, distilled from that SSL run when
`--config.teacher.workdir=workdir/ssl_tiny` is given, else from a random teacher (announced).
"""

import math

import ml_collections

from dinojax.config_args import parse_arg
from dinojax.config_defaults import TINY_VIT, dinov2_lvd_recipe, dinov2_ssl

STUDENTS = {"vits14": "vit_small", "vitb14": "vit_base", "vitl14": "vit_large"}


def get_config(arg=None):
  arg = parse_arg(arg, student="vits14", tiny=False)
  if arg.student not in STUDENTS:
    raise ValueError(f"Unknown student {arg.student!r}; choose one of {sorted(STUDENTS)}.")
  c = dinov2_lvd_recipe(dinov2_ssl())
  c.job = "distill"

  # The teacher: configs/dinov2_vitg14.py's backbone and heads (its training run's EMA teacher).
  vitg = dinov2_lvd_recipe(dinov2_ssl())
  vitg.model.update(variant="vit_giant2", drop_path_rate=0.0)
  c.teacher = ml_collections.ConfigDict(dict(
      workdir="", step=0,  # a dinojax SSL run and its checkpoint step (0: the latest)
      checkpoint="",       # or an official DINOv2 training checkpoint
      random_init=False,   # neither: a random teacher (tests, CPU demos)
      model=vitg.model, dino_head=vitg.dino.head, ibot_head=vitg.ibot.head,
      separate_head=vitg.ibot.separate_head,
      warmup_temp=0.04, temp=0.07, warmup_temp_epochs=30))
  c.ema = ml_collections.ConfigDict(dict(momentum=0.994, final_momentum=1.0))

  # The student: no stochastic depth, no masking (so no mask settings).
  c.model.update(variant=STUDENTS[arg.student], ffn="mlp", drop_path_rate=0.0)
  for key in ("mask_probability", "mask_ratio", "mask_group"):
    del c.ibot[key]

  c.batch_size = 2048
  c.optim.base_lr = 1e-3 / math.sqrt(c.batch_size / 1024)  # peak lr 1e-3 after the sqrt(B/1024) rule
  c.init_from = ""  # an earlier distillation run's workdir (its student, EMA and centres)
  if arg.tiny:
    return tiny(c)
  return c


def tiny(c):
  """Minutes on 2 CPU cores: digits at 32 px, a 48-wide student of 4 blocks learning from the
  96-wide teacher of `dinov2_vits14.py:tiny` (same 4-px patches, 128 prototypes, shared head)."""
  c.teacher.model = ml_collections.ConfigDict(dict(
      variant=None, ffn="mlp", drop_path_rate=0.0, attention="xla", **TINY_VIT))
  head = dict(prototypes=128, bottleneck_dim=64, nlayers=3, hidden_dim=256)
  c.teacher.update(random_init=True, separate_head=False, warmup_temp=0.04, temp=0.04)
  c.teacher.dino_head.update(head)
  c.teacher.ibot_head.update(head)
  # LayerScale 1.0 as the tiny SSL config: with 1e-5 a run of minutes barely moves the CLS token.
  c.model.update(variant=None, embed_dim=48, depth=4, num_heads=3, patch_size=4, img_size=32,
                 init_values=1.0, dtype="float32")
  c.dino.head.update(head)
  c.ibot.head.update(head)
  c.ibot.separate_head = False
  c.crops.update(global_size=32, local_size=16, local_number=2)
  c.batch_size = 64
  c.steps_per_epoch = 25
  c.optim.update(epochs=8, warmup_epochs=1, base_lr=0.002, freeze_last_layer_epochs=0)
  c.ema.momentum = 0.99  # an EMA horizon of ~100 steps: 0.994 would still mostly be the init at step 200
  c.data.update(source="digits", split="train", threads=2)
  c.eval.update(every=100, source="digits", train_split="train", heldout_split="heldout", batch_size=128)
  c.checkpoint.update(every=100, keep=2)
  c.log_every = 10
  c.mesh.update(data=-1, fsdp=1, model=1)
  return c
