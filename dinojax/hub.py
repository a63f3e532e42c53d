"""One-line loaders for the released DINOv2 backbones, ImageNet classifiers and semantic
segmentation heads, mirroring `torch.hub.load("facebookresearch/dinov2", "dinov2_vits14_reg")` (and
`"dinov2_vits14_reg_lc"`): the same architectures and interpolation settings, our params."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinojax import convert
from dinojax.models import depther
from dinojax.models.classifier import LinearClassifier, head_from_state_dict
from dinojax.models.segmenter import BNHead, LinearSegmenter
from dinojax.models.segmenter import head_from_state_dict as segmenter_head_from_state_dict
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
    head_params = head_from_state_dict(convert.load_state_dict(head), in_features)
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
    layers, head_params = segmenter_head_from_state_dict(convert.load_state_dict(head), backbone.embed_dim)
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
    head_module, head_params = depther.head_from_state_dict(
        convert.load_state_dict(head), embed_dim=backbone.embed_dim, head_type=head_type,
        depth_range=depth_range)
  blocks = depther.official_blocks(_ARCHS[key], backbone.depth, head_module.layers)
  model = depther.Depther(backbone, head_module, blocks)
  _, backbone_params = dinov2(name, checkpoint, seed, **overrides)
  return model, {"params": {"backbone": backbone_params["params"], "head": head_params}}
