"""DINOv2 backbones: PyTorch state dicts <-> `ViT` params.

Reads both namings users have: the official repository's (`blocks.0.attn.qkv.weight`, `ls1.gamma`,
`pos_embed`, `mlp.w12.weight` for giant; training checkpoints with `backbone.`/`module.` prefixes and
chunked `blocks.<chunk>.<i>.` keys) and Hugging Face's `Dinov2Model` / `Dinov2WithRegistersModel`
(hub files with `attention.attention.query`, and transformers 5's `attention.q_proj`). Everything is first
brought to the official naming, then mapped to our params tree; export goes the other way.
"""

import math
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dinojax.convert.state_dicts import StateDict, load_state_dict, require
from dinojax.models.vit import ViT, ffn_hidden_dim, stack_blocks, unstack_blocks

_PREFIXES = ("module.", "backbone.", "_orig_mod.", "dinov2.", "model.")


# ---------------------------------------------------------------------------------------------------
# Any naming -> official naming
# ---------------------------------------------------------------------------------------------------
def _strip_prefixes(sd: StateDict) -> StateDict:
  if any(k.startswith("backbone.") for k in sd):  # A training checkpoint: keep the backbone only.
    sd = {k: v for k, v in sd.items() if k.startswith("backbone.")}
  changed = True
  while changed:
    changed = False
    for prefix in _PREFIXES:
      if sd and all(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items()}
        changed = True
  return sd


def is_huggingface(sd: StateDict) -> bool:
  return "embeddings.cls_token" in sd


_HF_RENAMES = [
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.(cls_token|mask_token|register_tokens)$", r"\1"),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),
    (r"^encoder\.layer\.(\d+)\.mlp\.(weights_out|down_proj)\.", r"blocks.\1.mlp.w3."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"^layernorm\.", "norm."),
]

# Pieces Hugging Face keeps apart that the official model fuses: (fused, [parts in order]).
_HF_FUSED = [
    ("attn.qkv", ["attention.attention.query", "attention.attention.key", "attention.attention.value"]),
    ("attn.qkv", ["attention.q_proj", "attention.k_proj", "attention.v_proj"]),
    ("mlp.w12", ["mlp.gate_proj", "mlp.up_proj"]),
]


def _hf_to_official(sd: StateDict) -> StateDict:
  sd = dict(sd)
  out = {}
  for key in [k for k in sd if k.startswith("encoder.layer.")]:
    match = re.match(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", key)
    if not match or key not in sd:
      continue
    i, module, kind = match.groups()
    for fused, parts in _HF_FUSED:
      if module == parts[0]:
        keys = [f"encoder.layer.{i}.{p}.{kind}" for p in parts]
        missing = [k for k in keys if k not in sd]
        if missing:
          raise KeyError(f"Checkpoint is missing key {missing[0]!r} (needed with {key!r}).")
        out[f"blocks.{i}.{fused}.{kind}"] = np.concatenate([sd.pop(k) for k in keys], axis=0)
  for key, value in sd.items():
    new = key
    for pattern, repl in _HF_RENAMES:
      new, n = re.subn(pattern, repl, new)
      if n:
        break
    out[new] = value
  return out


def to_official_naming(sd: StateDict) -> StateDict:
  """Any supported naming -> the official repository's keys, tensors unchanged."""
  sd = _strip_prefixes(sd)
  if is_huggingface(sd):
    sd = _hf_to_official(sd)
  # Chunked blocks (`blocks.<chunk>.<i>.`) from FSDP training runs -> `blocks.<i>.`.
  return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------------
# Architecture from shapes
# ---------------------------------------------------------------------------------------------------
def infer_config(sd: StateDict, huggingface: bool = False) -> dict[str, Any]:
  """ViT constructor arguments read off an official-naming state dict's shapes.

  Heads are not visible in shapes; every DINOv2 model uses 64-dim heads, so `embed_dim // 64` is
  assumed (override `num_heads` if yours differs). Position-embedding interpolation follows the source:
  official models use offset 0.1 without registers and antialiasing with them; Hugging Face resizes to
  the exact size, antialiased only with registers.
  """
  embed_dim = require(sd, "cls_token").shape[-1]
  proj = require(sd, "patch_embed.proj.weight")
  patch_size, in_chans = proj.shape[-1], proj.shape[1]
  depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k))), default=-1)
  if depth == 0:
    raise KeyError("Checkpoint has no transformer blocks (no 'blocks.N.*' keys).")
  grid = math.isqrt(require(sd, "pos_embed").shape[1] - 1)
  registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
  ffn = "swiglu" if "blocks.0.mlp.w12.weight" in sd else "mlp"
  if ffn == "swiglu":
    hidden = require(sd, "blocks.0.mlp.w12.weight").shape[0] // 2
    mlp_ratio = hidden * 1.5 / embed_dim
  else:
    hidden = require(sd, "blocks.0.mlp.fc1.weight").shape[0]
    mlp_ratio = hidden / embed_dim
  if ffn_hidden_dim(embed_dim, mlp_ratio, ffn) != hidden:
    raise ValueError(f"Cannot express FFN width {hidden} for embed_dim {embed_dim} with an mlp_ratio.")
  offset, antialias = (0.0, bool(registers)) if huggingface else ((0.0, True) if registers else (0.1, False))
  return dict(
      embed_dim=embed_dim, depth=depth, num_heads=embed_dim // 64, patch_size=patch_size,
      img_size=grid * patch_size, in_chans=in_chans, mlp_ratio=mlp_ratio, ffn=ffn,
      qkv_bias="blocks.0.attn.qkv.bias" in sd, proj_bias="blocks.0.attn.proj.bias" in sd,
      ffn_bias=("blocks.0.mlp.w12.bias" if ffn == "swiglu" else "blocks.0.mlp.fc1.bias") in sd,
      init_values=1.0 if "blocks.0.ls1.gamma" in sd else None, num_register_tokens=registers,
      interpolate_offset=offset, interpolate_antialias=antialias)


# ---------------------------------------------------------------------------------------------------
# Official naming <-> params
# ---------------------------------------------------------------------------------------------------
def _official_key(path: tuple[str, ...]) -> str:
  """Our param path -> official key; the tensor layout change lives in `_to_ours`/`_to_torch`."""
  names = {"kernel": "weight", "scale": "weight", "bias": "bias", "gamma": "gamma"}
  head, *rest = path
  if head == "patch_embed":
    return f"patch_embed.proj.{names[rest[0]]}"
  if head.startswith("blocks_"):
    return ".".join(["blocks", head[len("blocks_"):], *rest[:-1], names[rest[-1]]])
  if head == "norm":
    return f"norm.{names[rest[0]]}"
  return head


def _to_ours(path: tuple[str, ...], t: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  leaf, parent = path[-1], path[-2] if len(path) > 1 else ""
  if parent == "patch_embed" and leaf == "kernel":
    return t.transpose(2, 3, 1, 0)                                 # (D, C, p, p) -> (p, p, C, D)
  if parent == "qkv" and leaf == "kernel":
    return t.T.reshape(shape)                                      # (3D, D) -> (D, 3, H, Dh)
  if parent == "proj" and leaf == "kernel":
    return t.T.reshape(shape)                                      # (D, D) -> (H, Dh, D)
  if parent == "w12" and leaf == "kernel":
    return t.T.reshape(shape)                                      # (2F, D) -> (D, 2, F)
  if leaf == "kernel":
    return t.T
  return t.reshape(shape) if parent in ("qkv", "w12") else t     # fused biases


def _to_torch(path: tuple[str, ...], p: np.ndarray) -> np.ndarray:
  leaf, parent = path[-1], path[-2] if len(path) > 1 else ""
  if parent == "patch_embed" and leaf == "kernel":
    return p.transpose(3, 2, 0, 1)
  if leaf == "kernel":
    return p.reshape(-1, p.shape[-1]).T if parent == "proj" else p.reshape(p.shape[0], -1).T
  return p.reshape(-1) if parent in ("qkv", "w12") else p


def _expected_shapes(model: ViT) -> dict[tuple[str, ...], tuple[int, ...]]:
  images = jnp.zeros((1, model.patch_size, model.patch_size, model.in_chans), jnp.float32)
  abstract = jax.eval_shape(lambda x: nn.unbox(model.init(jax.random.key(0), x)), images)["params"]
  flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
  return {tuple(k.key for k in path): leaf.shape for path, leaf in flat}


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def state_dict_to_params(sd: StateDict, model: ViT) -> dict:
  """Maps an official-naming state dict onto `model`'s params tree, strictly: a missing key, a key
  left over or a shape mismatch is an error that names the key and both shapes. A scanned model
  (`scan_blocks`) gets its blocks stacked (`vit.stack_blocks`)."""
  params, used = {}, set()
  for path, shape in _expected_shapes(model.clone(scan_blocks=False)).items():
    key = _official_key(path)
    tensor = require(sd, key)
    used.add(key)
    expected = _to_torch(path, np.zeros(shape, np.float32)).shape
    if tuple(tensor.shape) != tuple(expected):
      raise ValueError(f"Shape mismatch for {key!r}: checkpoint has {tuple(tensor.shape)}, "
                       f"the model expects {tuple(expected)}.")
    params[path] = np.asarray(_to_ours(path, tensor, shape), np.float32)
  unexpected = sorted(set(sd) - used)
  if unexpected:
    raise ValueError(f"Checkpoint has keys the model does not use: {unexpected[:8]}"
                     f"{' ...' if len(unexpected) > 8 else ''}")
  params = {"params": _unflatten(params)}
  return stack_blocks(params) if model.scan_blocks else params


def params_to_state_dict(params: dict) -> StateDict:
  """Our params (either blocks layout) -> an official-naming state dict (what `torch.hub` DINOv2
  models `load_state_dict`)."""
  tree = params["params"] if "params" in params else params
  tree = unstack_blocks(tree) if "blocks" in tree else tree
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_official_key(tuple(k.key for k in path)): _to_torch(tuple(k.key for k in path),
                                                               np.asarray(leaf, np.float32))
          for path, leaf in flat}


def from_state_dict(sd: StateDict, **overrides) -> tuple[ViT, dict]:
  """(model, params) from a state dict in any supported naming; the architecture comes from its
  shapes, `overrides` set what shapes cannot tell (e.g. `num_heads`, `attention`, `dtype`)."""
  huggingface = is_huggingface(_strip_prefixes(sd))
  sd = to_official_naming(sd)
  model = ViT(**{**infer_config(sd, huggingface), **overrides})
  return model, state_dict_to_params(sd, model)


def from_checkpoint(path: str | os.PathLike, **overrides) -> tuple[ViT, dict]:
  """(model, params) from a `.pth` or `.safetensors` DINOv2 checkpoint file."""
  return from_state_dict(load_state_dict(path), **overrides)
