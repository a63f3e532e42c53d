"""One-line loaders for the released DINOv2 backbones, mirroring `torch.hub.load("facebookresearch/
dinov2", "dinov2_vits14_reg")`: the same architectures and interpolation settings, our params."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinojax import convert
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
