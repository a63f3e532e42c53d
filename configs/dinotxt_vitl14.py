"""dino.txt (Jose et al., "DINOv2 Meets Text", CVPR 2025): LiT-style text alignment of a frozen DINOv2
ViT-L/14 with registers.

Values follow the released model (`dinov2_vitl14_reg4_dinotxt_tet1280d20h24l` in dinov2's hub) and the
authors' public training config (`dinov3/eval/text/configs/dinov3_vitl_text.yaml`): two trainable
SwiGLU blocks on the frozen backbone, image embedding [CLS ; mean of patches] (2 × 1024 = 2048), a
24-layer 1280-d causal text transformer with CLIP's BPE vocabulary pooled at the end-of-text token and
projected to 2048, symmetric InfoNCE with a learned temperature (init 0.07, clamped at 1/100),
AdamW at 7e-4 with 2000 warmup steps and a cosine to 0 over 50k steps. The paper trains on its own
curated (text + image balanced) image–text set; COCO captions here stand in for it.

`:tiny` trains on the offline digit captions on a CPU in minutes (random frozen backbone, a small
SentencePiece vocabulary trained on the captions) and shows zero-shot accuracy above chance.
"""

import ml_collections

from dinojax import parallel
from dinojax.config_args import parse_arg
from dinojax.config_defaults import frozen_backbone, profile
from dinojax.data import captions
from dinojax.evaluators import zero_shot


def get_config(arg=None):
  arg = parse_arg(arg, tiny=False)
  c = ml_collections.ConfigDict()
  c.job = "dinotxt"
  c.seed = 11  # the official run's
  c.eval_only = False  # restore the latest checkpoint of --workdir, evaluate, stop

  # The frozen DINOv2 (config_defaults.frozen_backbone); `freeze=False` trains it too. bfloat16 as
  # the text tower: the vision head trains in the backbone's dtype.
  c.backbone = frozen_backbone("vitl14_reg", attention="xla", dtype="bfloat16")
  c.backbone.freeze = True
  c.image_size = 224  # vision_model_train_img_size
  c.embed_dim = 2048  # joint space: 1024 (CLS) + 1024 (mean of patches)
  c.vision = ml_collections.ConfigDict(dict(
      num_blocks=2,               # vision_model_num_head_blocks
      drop_path=0.3,              # vision_model_head_blocks_drop_path
      init_values=1e-5,           # the head blocks' LayerScale
      use_linear_projection=False,  # ViT-L's 2 × 1024 already equals embed_dim: no projection
      qkv_bias=False,             # the official head blocks' attention has no q/k/v bias
      norm_eps=1e-5,              # ... and PyTorch's LayerNorm epsilon (1e-6: the backbone's)
  ))
  c.text = ml_collections.ConfigDict(dict(
      width=1280, depth=24, num_heads=20,  # "tet1280d20h24l"
      context_length=77, pooling="eot",    # argmax pooling at <|endoftext|>
      qkv_bias=False,                      # official: no q/k/v bias (CLIP's text tower has one)
      activation="gelu", attention="xla", dtype="bfloat16"))
  # "clip": CLIP's BPE (49,408 tokens), the released text encoder's vocabulary; "sentencepiece":
  # `model` is a .model file, or empty to train one of `vocab_size` pieces on the training captions
  # (saved as <workdir>/tokenizer.model).
  c.tokenizer = ml_collections.ConfigDict(dict(kind="clip", model="", vocab_size=32000,
                                               model_type="bpe", train_examples=100_000))
  # "softmax": CLIP's InfoNCE (the paper); "sigmoid": SigLIP's loss, t' = log 10, b = -10.
  c.loss = ml_collections.ConfigDict(dict(kind="softmax"))

  c.batch_size = 8192       # 256 per GPU × 32 GPUs, the public recipe
  c.total_steps = 50_000    # max_iteration
  c.optim = ml_collections.ConfigDict(dict(
      lr=7e-4, min_lr=0.0, warmup_steps=2000, weight_decay=1e-4, adamw_beta1=0.9, adamw_beta2=0.99,
      # No decay on gains, biases and the temperature (official: ndim < 2, "ln", "bias", "logit_scale").
      no_weight_decay=("bias", "norm", "gamma", "logit_scale", "logit_bias")))
  # Random resized crops of (0.08, 1) (the official classification train transform), never flipped.
  c.data = ml_collections.ConfigDict(dict(source="tfds:coco_captions", split="train", threads=16,
                                          crop_scale=(0.08, 1.0)))
  c.eval = ml_collections.ConfigDict(dict(every=5000, batch_size=256))
  # Zero-shot classification: image source (sources.make_source), its class names (or the source's
  # `class_names`), prompt templates. Empty source: skipped.
  c.eval.zero_shot = ml_collections.ConfigDict(dict(source="", split="validation", class_names=(),
                                                    templates=zero_shot.CLIP_TEMPLATES))
  # Image↔text retrieval on a caption source's first captions. Empty source: skipped.
  c.eval.retrieval = ml_collections.ConfigDict(dict(source="tfds:coco_captions", split="val"))
  # Pictures of what trains (`evaluators.pictures`): the head's patch PCA and last block's CLS
  # attention on a source's first 4 images, also before the first step; the backbone's when unfrozen.
  c.eval.pictures = ml_collections.ConfigDict(dict(source="tfds:coco_captions", heldout_split="val"))
  # The evaluations (`evaluators.base`), their settings from `eval` and `eval.<name>`.
  c.evals = ml_collections.ConfigDict(dict(zero_shot=dict(type="zero_shot"),
                                           retrieval=dict(type="retrieval"),
                                           pictures=dict(type="pictures", first=True)))
  c.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=5))
  c.log_every = 50
  c.profile = profile()

  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "model": 1})
  c.mesh_dcn = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "model": 1})
  c.sharding_rules = parallel.DEFAULT_RULES
  c.sharding_tolerance = 0.3  # as dinov2_ssl()'s
  if arg.tiny:
    return tiny(c)
  return c


def tiny(c):
  """Minutes on 2 CPU cores: digits at 32 px, a random 4-block ViT (4-px patches) kept frozen,
  one trainable block, a 2-layer 64-d text tower on a small SentencePiece vocabulary."""
  c.backbone.update(name="", dtype="float32", model=ml_collections.ConfigDict(dict(
      embed_dim=64, depth=4, num_heads=4, patch_size=4, img_size=32, init_values=1.0,
      num_register_tokens=0, dtype="float32")))
  c.image_size = 32
  c.embed_dim = 64  # 32 + 32: the head projects the 64-d tokens to 32
  c.vision.update(num_blocks=1, drop_path=0.0)
  c.text.update(width=64, depth=2, num_heads=4, context_length=16, dtype="float32")
  c.tokenizer.update(kind="sentencepiece", vocab_size=128)
  c.batch_size = 64
  c.total_steps = 300
  c.optim.update(lr=1e-3, warmup_steps=20, weight_decay=1e-4)
  c.data.update(source="digits", split="train", threads=2, crop_scale=(0.6, 1.0))
  c.eval.update(every=100, batch_size=128)
  c.eval.zero_shot.update(source="digits", split="heldout", class_names=captions.DIGIT_NAMES,
                          templates=("a photo of the digit {}.", "a drawing of a {}."))
  c.eval.retrieval.update(source="digits", split="heldout")
  c.eval.pictures.update(source="digits", heldout_split="heldout")
  c.checkpoint.update(every=100, keep=2)
  c.log_every = 10
  c.mesh.update(data=-1, fsdp=1, model=1)
  return c
