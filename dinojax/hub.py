"""One-line loaders for the released DINOv2 backbones, ImageNet classifiers and semantic
segmentation heads, mirroring `torch.hub.load("facebookresearch/dinov2", "dinov2_vits14_reg")` (and
`"dinov2_vits14_reg_lc"`): the same architectures and interpolation settings, our params. Also the
released dino.txt and Talk2DINO models."""

import dataclasses
import functools
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dinojax import convert
from dinojax.data import clip_tokenizer
from dinojax.models import depther
from dinojax.models.classifier import LinearClassifier
from dinojax.models.dinotxt import INIT_LOGIT_SCALE, DinoTxt, VisionHead
from dinojax.models.segmenter import BNHead, LinearSegmenter
from dinojax.models.talk2dino import TextToPatchProjection
from dinojax.models.text import CLIP_VARIANTS, TextTransformer
from dinojax.models.vit import VARIANTS, ViT

_ARCHS = {"vits14": "vit_small", "vitb14": "vit_base", "vitl14": "vit_large", "vitg14": "vit_giant2"}
NAMES = tuple(sorted([*_ARCHS, *(f"{n}_reg" for n in _ARCHS)]))


def dinov2_model(name: str, **overrides) -> ViT:
  """The ViT of a released backbone (`vits14`, `vitb14_reg`, ...), with official hub settings."""
  key = name.removeprefix("dinov2_")
  registers = key.endswith("_reg")
  arch = _ARCHS.get(key.removesuffix("_reg"))
  if arch is None:
    raise ValueError(f"Unknown DINOv2 backbone {name!r}; choose one of {NAMES}.")
  kwargs = dict(VARIANTS[arch], patch_size=14, img_size=518, init_values=1.0,
                num_register_tokens=4 if registers else 0,
                interpolate_offset=0.0 if registers else 0.1, interpolate_antialias=registers)
  return ViT(**{**kwargs, **overrides})


def dinov2(name: str, checkpoint: str | os.PathLike | None = None, seed: int = 0,
           **overrides) -> tuple[ViT, dict]:
  """(model, params) for a released DINOv2 backbone.

  `checkpoint` is a `.pth` or `.safetensors` file in the official or Hugging Face naming (no download
  happens here); it must match the named architecture, key for key and shape for shape. Without one,
  params are randomly initialised with `seed`. Checkpoint params come back as host NumPy arrays: place
  them (`jax.device_put`, or `parallel.to_device` with shardings) before calling the model in a loop.
  """
  model = dinov2_model(name, **overrides)
  if checkpoint is not None:
    sd = convert.to_official_naming(convert.load_state_dict(checkpoint))
    return model, convert.state_dict_to_params(sd, model)
  images = jnp.zeros((1, model.patch_size, model.patch_size, model.in_chans), jnp.float32)
  return model, jax.jit(lambda k: nn.unbox(model.init(k, images)))(jax.random.key(seed))


def dinov2_classifier(name: str, checkpoint: str | os.PathLike | None = None,
                      head: str | os.PathLike | None = None, blocks: int = 4, avgpool: bool = True,
                      seed: int = 0, **overrides) -> tuple[LinearClassifier, dict]:
  """(model, params) for a released DINOv2 ImageNet classifier, mirroring `torch.hub.load(...,
  "dinov2_vitl14_reg_lc")`: the backbone (`checkpoint`, as `dinov2`) and its linear `head`, a
  `.pth`/`.safetensors` file with `weight` and `bias` (the released
  `dinov2_vitl14_reg4_linear4_head.pth`, or the best classifier a linear evaluation wrote).
  `blocks=4` reads the class tokens of the last 4 blocks (`linear4` heads), `blocks=1` the last
  (`linear` heads); both then the mean patch token. Without `head`, a random one from `seed`.
  `model.apply(params, images)` gives (B, classes) logits."""
  backbone, backbone_params = dinov2(name, checkpoint, seed, **overrides)
  in_features = (blocks + avgpool) * backbone.embed_dim
  if head is None:
    head_params = {"kernel": 0.01 * jax.random.normal(jax.random.key(seed + 1), (in_features, 1000)),
                   "bias": jnp.zeros(1000)}
  else:
    head_params = convert.classifier_head_from_state_dict(convert.load_state_dict(head), in_features)
  model = LinearClassifier(backbone, blocks, avgpool, head_params["bias"].shape[0])
  return model, {"params": {"backbone": backbone_params["params"], "head": head_params}}


def dinov2_segmenter(name: str, checkpoint: str | os.PathLike | None = None,
                     head: str | os.PathLike | None = None, layers: int = 1, num_classes: int = 150,
                     seed: int = 0, **overrides) -> tuple[LinearSegmenter, dict]:
  """(model, params) for a released DINOv2 semantic segmentation model: the backbone (`checkpoint`,
  as `dinov2`) and its `BNHead`, `head` a released head file (`dinov2_vits14_ade20k_linear_head.pth`,
  `dinov2_vitl14_voc2012_ms_head.pth`, ...; the blocks it reads and its classes come from its shapes).
  Without `head`, a random one reading the last `layers` blocks into `num_classes`.
  `model.apply(params, images)` gives (B, h, w, classes) patch logits of ImageNet-normalised images;
  `evaluators.linear_segmentation` runs the paper's sliding-window protocol around it."""
  backbone = dinov2_model(name, **overrides)  # the head is checked against it before any weights load
  if head is None:
    features = jnp.zeros((1, 1, 1, layers * backbone.embed_dim), jnp.float32)
    head_params = BNHead(num_classes).init(jax.random.key(seed + 1), features)["params"]
  else:
    layers, head_params = convert.segmenter_head_from_state_dict(convert.load_state_dict(head),
                                                                 backbone.embed_dim)
  model = LinearSegmenter(backbone, layers, head_params["conv_seg"]["bias"].shape[0])
  if model.layers > backbone.depth:
    raise ValueError(f"The head reads the last {model.layers} blocks; the backbone has {backbone.depth}.")
  _, backbone_params = dinov2(name, checkpoint, seed, **overrides)
  return model, {"params": {"backbone": backbone_params["params"], "head": head_params}}


def dinov2_depther(name: str, checkpoint: str | os.PathLike | None = None,
                   head: str | os.PathLike | None = None, head_type: str = "linear", dataset: str = "nyu",
                   layers: int = 4, depth_range: tuple[float, float] | None = None, seed: int = 0,
                   **overrides) -> tuple[depther.Depther, dict]:
  """(model, params) for a released DINOv2 depth estimator, mirroring `torch.hub.load(...,
  "dinov2_vits14_ld")` (`head_type="linear"`) and `"dinov2_vits14_dd"` (`"dpt"`): the backbone
  (`checkpoint`, as `dinov2`; the heads exist for the backbones without registers only) and `head`, a
  released head file (`dinov2_vits14_nyu_linear4_head.pth`, `dinov2_vitl14_kitti_dpt_head.pth`, ...;
  a linear head's blocks, 1 or 4, come from its shapes). `dataset` ("nyu" or "kitti", the head's)
  sets the depth range, 1 mm to 10 or 80 m, as the head was trained (torch.hub's `_ld` uses 80 m for
  every linear head; `depth_range=(0.001, 80.0)` reproduces it). Without `head`, a random one (a
  linear one reads `layers` blocks). `model.apply(params, images)` gives (B, H, W) depth in metres of
  ImageNet-normalised images; `flip=True` adds the evaluation's mirrored pass."""
  key = name.removeprefix("dinov2_")
  if key.endswith("_reg"):
    raise ValueError(f"DINOv2's depth heads were released for the backbones without registers; "
                     f"use {name.removesuffix('_reg')!r}.")
  backbone = dinov2_model(name, **overrides)  # the head is checked against it before any weights load
  depth_range = depther.depth_range(dataset) if depth_range is None else tuple(depth_range)
  if head is None:
    head_module = depther.new_head(head_type, depth_range=depth_range, layers=layers)
    head_params = depther.init_head(head_module, backbone.embed_dim, seed + 1)
  else:
    head_module, head_params = convert.depther_head_from_state_dict(
        convert.load_state_dict(head), embed_dim=backbone.embed_dim, head_type=head_type,
        depth_range=depth_range)
  blocks = depther.official_blocks(_ARCHS[key], backbone.depth, head_module.layers)
  model = depther.Depther(backbone, head_module, blocks)
  _, backbone_params = dinov2(name, checkpoint, seed, **overrides)
  return model, {"params": {"backbone": backbone_params["params"], "head": head_params}}


# The released dino.txt (`dinov2_vitl14_reg4_dinotxt_tet1280d20h24l`, official `dinov2/hub/dinotxt.py`):
# two head blocks whose [CLS ; mean of patches] is the 2048-d joint space, and a 24-layer 1280-d causal
# text tower on CLIP's BPE (49,408 tokens, padded with 0) pooled at <|endoftext|> (49407).
DINOTXT_HEAD = dict(embed_dim=2048, num_blocks=2, drop_path=0.3)
DINOTXT_TEXT = dict(vocab_size=49408, context_length=77, width=1280, depth=24, num_heads=20, pooling="eot",
                    eot_id=49407, pad_id=0, activation="gelu")


def dinotxt_model(name: str = "vitl14_reg", head: dict | None = None, text: dict | None = None,
                  **overrides) -> DinoTxt:
  """The released dino.txt's architecture on a DINOv2 backbone (`dinov2_model(name, **overrides)`);
  `head` and `text` override `DINOTXT_HEAD` and `DINOTXT_TEXT`."""
  backbone = dinov2_model(name, **overrides)
  vision_head = VisionHead(num_heads=backbone.num_heads, **{**DINOTXT_HEAD, **(head or {})})
  text_tower = TextTransformer(**{**DINOTXT_TEXT, "embed_dim": vision_head.embed_dim, **(text or {})})
  return DinoTxt(backbone, vision_head, text_tower)


def dinotxt(name: str = "vitl14_reg", backbone: str | os.PathLike | None = None,
            vision_head: str | os.PathLike | None = None, text_encoder: str | os.PathLike | None = None,
            seed: int = 0, head: dict | None = None, text: dict | None = None,
            **overrides) -> tuple[DinoTxt, dict, Callable]:
  """(model, params, tokenize) for dino.txt, mirroring the official
  `dinov2_vitl14_reg4_dinotxt_tet1280d20h24l()` and `get_tokenizer()`.

  `backbone` is the DINOv2 checkpoint (as `dinov2`; `dinov2_vitl14_reg4_pretrain.pth` for the released
  model), `vision_head` and `text_encoder` the released `..._vision_head.pth` and `..._text_encoder.pth`
  (or a dinojax run's export, `convert.dinotxt_*_to_state_dict`), each checked key for key and shape
  for shape. Each one left out is random from `seed`. `head` and `text` override the released head's
  and text tower's settings (`VisionHead`, `TextTransformer` fields), `overrides` the backbone's.
  `tokenize(texts)` gives (n, context_length) int32 CLIP ids; then
  `model.apply(params, images, method=model.encode_image)["image_embeds"]` and
  `model.apply(params, tokenize(texts), method=model.encode_text)["text_embeds"]`, or
  `model.apply(params, images, ids)` for both unit embeddings (see `models.dinotxt.DinoTxt`).
  """
  model = dinotxt_model(name, head, text, **overrides)
  backbone_model, head_model, text_model = model.backbone, model.vision_head, model.text
  _, backbone_params = dinov2(name, backbone, seed, **overrides)
  head_key, text_key = jax.random.split(jax.random.key(seed + 1))
  if vision_head is None:
    tokens = jnp.zeros((1, 2, backbone_model.embed_dim))
    head_params = jax.jit(lambda k: nn.unbox(head_model.init(k, tokens, 1)))(head_key)
  else:
    head_params = convert.dinotxt_vision_head_from_state_dict(
        convert.load_state_dict(vision_head), head_model, backbone_model.embed_dim)
  if text_encoder is None:
    ids = jnp.zeros((1, text_model.context_length), jnp.int32)
    text_params = jax.jit(lambda k: nn.unbox(text_model.init(k, ids)))(text_key)
  else:
    text_params = convert.dinotxt_text_encoder_from_state_dict(convert.load_state_dict(text_encoder),
                                                               text_model)
  params = {"backbone": backbone_params["params"], "vision_head": head_params["params"],
            "text": text_params["params"], "logit_scale": np.float32(INIT_LOGIT_SCALE)}
  tokenize = functools.partial(clip_tokenizer.tokenize, context_length=text_model.context_length)
  return model, {"params": params}, tokenize


@dataclasses.dataclass
class Talk2DINOModels:
  """The three frozen pieces of Talk2DINO and their params: a DINOv2 backbone, a CLIP text tower, ψ."""
  backbone: Any
  backbone_params: Any
  text_encoder: Any
  text_params: Any
  projection: Any
  projection_params: Any

  def __post_init__(self):
    # Params loaded from a checkpoint are host NumPy arrays (often transposed views); left there,
    # every jitted call would copy (and transpose) them to the device again (docs/benchmarks.md).
    for name in ("backbone_params", "text_params", "projection_params"):
      setattr(self, name, jax.device_put(getattr(self, name)))


def talk2dino(backbone: str = "vitb14_reg", backbone_checkpoint: str | None = None,
              clip_checkpoint: str | None = None, projection: str | None = None,
              projection_config: str | None = None, seed: int = 0,
              backbone_overrides: dict | None = None, text_overrides: dict | None = None,
              hidden_layers: int = 1) -> Talk2DINOModels:
  """Talk2DINO's pairing (DINOv2 ViT-B/14-reg, CLIP ViT-B/16 text, ψ): `backbone_checkpoint` as
  `dinov2`, `clip_checkpoint` a CLIP text tower (`convert.clip_text_from_state_dict`), `projection`
  the released ψ `.pth` (its activation read from `projection_config`, the official yaml). Any piece
  without a file is randomly initialised, for trying the pipeline offline (say so to whoever reads
  the output); `backbone_overrides` / `text_overrides` change the architectures (small random models
  for tests), `hidden_layers` ψ's depth when it is random."""
  # Inference only, so the platform's fastest attention ("auto"), in every block: background cleaning
  # reads only the last block's CLS row of logits, computed on the side (`return_cls_attention`).
  vit, vit_params = dinov2(backbone, checkpoint=backbone_checkpoint or None, seed=seed,
                           **{"attention": "auto", **(backbone_overrides or {})})
  key = jax.random.key(seed)
  if clip_checkpoint:
    text, text_params = convert.clip_text_from_state_dict(convert.load_state_dict(clip_checkpoint))
  else:
    text = TextTransformer(**{**CLIP_VARIANTS["ViT-B/16"], **(text_overrides or {})})
    ids = jnp.zeros((1, text.context_length), jnp.int32)
    text_params = jax.jit(lambda k: nn.unbox(text.init(k, ids)))(key)
  if projection:
    proj, proj_params = convert.talk2dino_from_checkpoint(projection, projection_config or None)
  else:
    proj = TextToPatchProjection(dino_dim=vit.embed_dim, hidden_layers=hidden_layers)
    proj_params = nn.unbox(proj.init(key, jnp.zeros((1, text.embed_dim))))
  if proj.dino_dim != vit.embed_dim:
    raise ValueError(f"The projection maps into {proj.dino_dim} dims but {backbone} is {vit.embed_dim} wide.")
  return Talk2DINOModels(vit, vit_params, text, text_params, proj, proj_params)
