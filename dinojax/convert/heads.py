"""DINO / iBOT heads and whole teachers from the official training checkpoints (the `model` of a
training run, or `teacher_checkpoint.pth`): PyTorch state dicts -> `DINOHead` and `ViT` params."""

import os
import re

import numpy as np

from dinojax.convert.backbone import from_state_dict
from dinojax.convert.state_dicts import StateDict, load_state_dict
from dinojax.models.heads import DINOHead
from dinojax.models.vit import ViT

_WEIGHT_NORM_NAMES = (("last_layer.weight_g", "last_layer.weight_v"),  # torch.nn.utils.weight_norm
                      ("last_layer.parametrizations.weight.original0",  # torch.nn.utils.parametrizations
                       "last_layer.parametrizations.weight.original1"))


def dino_head_from_state_dict(sd: StateDict, prefix: str = "", **overrides) -> tuple[DINOHead, dict]:
  """(DINOHead, params) from the official `DINOHead`'s weights, the keys under `prefix` (e.g.
  'teacher.dino_head.'): the MLP `mlp.0`, `mlp.2`, `mlp.4`, ... (Linear layers with a GELU between,
  so the odd indices hold no weights; a single `mlp.` Linear when nlayers=1) and the weight-normalised
  prototype layer `last_layer.weight_g` (out_dim, 1) and `last_layer.weight_v` (out_dim, bottleneck)
  (torch's newer `parametrizations.weight.original0/1` too). Sizes come from the shapes; `overrides`
  set the rest (e.g. `dtype`). Strict: a missing key is an error naming it, as is a key left over."""
  sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
  g_name, v_name = next((names for names in _WEIGHT_NORM_NAMES if names[0] in sd), _WEIGHT_NORM_NAMES[0])
  for name in (g_name, v_name):
    if name not in sd:
      raise KeyError(f"Checkpoint is missing key {prefix + name!r}.")
  if "mlp.weight" in sd:
    linears = ["mlp"]
  else:
    indices = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^mlp\.(\d+)\.weight$", k))})
    if not indices:
      raise KeyError(f"Checkpoint is missing key {prefix + 'mlp.0.weight'!r}.")
    if indices != list(range(0, 2 * len(indices), 2)):
      raise ValueError(f"Unsupported head layout under {prefix!r}: Linear layers at mlp.{indices} (the "
                       "official head without BatchNorm has them at mlp.0, mlp.2, mlp.4, ...).")
    linears = [f"mlp.{i}" for i in indices]
  bias = f"{linears[0]}.bias" in sd
  weights = [np.asarray(sd[f"{n}.weight"], np.float32) for n in linears]
  v = np.asarray(sd[v_name], np.float32)
  g = np.asarray(sd[g_name], np.float32).reshape(-1)
  model = DINOHead(**{"out_dim": v.shape[0], "nlayers": len(linears), "bottleneck_dim": weights[-1].shape[0],
                      "hidden_dim": weights[0].shape[0] if len(linears) > 1 else 2048, "mlp_bias": bias,
                      **overrides})
  if v.shape[1] != weights[-1].shape[0] or g.shape[0] != v.shape[0]:
    raise ValueError(f"Shape mismatch under {prefix!r}: last layer g {sd[g_name].shape}, v {v.shape} after "
                     f"an MLP to {weights[-1].shape[0]} dims.")
  params = {"last_layer_v": v.T, "last_layer_g": g}
  used = {g_name, v_name}
  for i, (name, w) in enumerate(zip(linears, weights)):
    params[f"mlp_{i}"] = {"kernel": w.T}
    used.add(f"{name}.weight")
    if bias:
      if f"{name}.bias" not in sd:
        raise KeyError(f"Checkpoint is missing key {prefix + name + '.bias'!r}.")
      params[f"mlp_{i}"]["bias"] = np.asarray(sd[f"{name}.bias"], np.float32)
      used.add(f"{name}.bias")
  unexpected = sorted(set(sd) - used)
  if unexpected:
    raise ValueError(f"Checkpoint has keys under {prefix!r} the head does not use: {unexpected[:8]}")
  return model, {"params": params}


def teacher_from_state_dict(sd: StateDict, **overrides) -> tuple[ViT, dict, dict]:
  """A whole DINOv2 teacher from an official training checkpoint (the `model` of a training run,
  with `teacher.backbone.*`, `teacher.dino_head.*` and, with separate heads, `teacher.ibot_head.*`;
  or the `teacher` dict of `teacher_checkpoint.pth`, the same without the prefix).

  Returns (backbone, {"dino_head": DINOHead, "ibot_head": DINOHead (separate heads only)}, params
  {"backbone", "dino_head", ["ibot_head"]}). `overrides` go to every module (e.g. `dtype`); a
  missing key is an error naming it as the file spells it."""
  original = sd
  prefix = "teacher." if any(k.startswith("teacher.") for k in sd) else ""
  sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
  for wrapper in ("module.", "_orig_mod."):
    if sd and all(k.startswith(wrapper) for k in sd):
      prefix += wrapper
      sd = {k[len(wrapper):]: v for k, v in sd.items()}
  backbone_sd = {k: v for k, v in sd.items() if k.startswith("backbone.")}
  if not backbone_sd:
    raise KeyError(f"Checkpoint is missing key {prefix + 'backbone.cls_token'!r} (no teacher backbone).")
  try:
    backbone, backbone_params = from_state_dict(backbone_sd, **{
        k: v for k, v in overrides.items() if k in ViT.__dataclass_fields__})
  except KeyError as e:  # Name the key as the file spells it.
    raise KeyError(re.sub(r"key '([^']+)'", lambda m: f"key '{prefix}backbone.{m.group(1)}'",
                          str(e.args[0]))) from None
  head_overrides = {k: v for k, v in overrides.items() if k in DINOHead.__dataclass_fields__}
  heads, params = {}, {"backbone": backbone_params["params"]}
  for name in ("dino_head", "ibot_head"):
    if name == "ibot_head" and not any(k.startswith("ibot_head.") for k in sd):
      continue  # A shared head: iBOT uses the DINO head.
    heads[name], head_params = dino_head_from_state_dict(original, f"{prefix}{name}.", **head_overrides)
    params[name] = head_params["params"]
  leftover = sorted(k for k in sd if not k.startswith(("backbone.", "dino_head.", "ibot_head.")))
  if leftover:
    raise ValueError(f"Checkpoint has teacher keys that are not backbone or head weights: "
                     f"{[prefix + k for k in leftover[:8]]}")
  in_dim = params["dino_head"]["mlp_0"]["kernel"].shape[0]
  if in_dim != backbone.embed_dim:
    raise ValueError(f"The teacher's heads take {in_dim}-dim tokens but its backbone is "
                     f"{backbone.embed_dim} wide.")
  return backbone, heads, params


def teacher_from_checkpoint(path: str | os.PathLike, **overrides) -> tuple[ViT, dict, dict]:
  """`teacher_from_state_dict` of a `.pth` training checkpoint (or its `.safetensors` export)."""
  try:
    return teacher_from_state_dict(load_state_dict(path), **overrides)
  except KeyError as e:
    raise KeyError(f"{path}: {e.args[0]}") from None
