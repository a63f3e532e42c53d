"""PyTorch checkpoints <-> dinojax params: DINOv2 backbones, dino.txt's vision head and text encoder
(both ways), Talk2DINO projections and CLIP text towers.

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
import yaml
from safetensors.numpy import load_file, save_file

from dinojax.models.clip_text import CLIPTextEncoder
from dinojax.models.dinotxt import VisionHead
from dinojax.models.heads import DINOHead
from dinojax.models.talk2dino import ACTIVATIONS, TextToPatchProjection
from dinojax.models.text import TextTransformer
from dinojax.models.vit import ViT, ffn_hidden_dim, stack_blocks, unstack_blocks

StateDict = dict[str, np.ndarray]

_WRAPPERS = ("teacher", "student", "model", "state_dict")
_PREFIXES = ("module.", "backbone.", "_orig_mod.", "dinov2.", "model.")


# ---------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------
def load_state_dict(path: str | os.PathLike) -> StateDict:
  """Reads a `.pth`/`.pt` or `.safetensors` checkpoint into a dict of NumPy arrays."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Checkpoint not found: {path}")
  if path.endswith(".safetensors"):
    return dict(load_file(path))
  if path.endswith((".pth", ".pt", ".bin")):
    torch = _torch(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in _WRAPPERS:
      if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
        obj = obj[wrapper]
        break
    # detach: a file saved from live parameters holds tensors that require grad.
    return {k: (v.float() if v.is_floating_point() else v).detach().numpy() for k, v in obj.items()}
  raise ValueError(f"Unsupported checkpoint format {path!r}; expected .pth, .pt, .bin or .safetensors.")


def _torch(path: str):
  """PyTorch, an optional dependency: only `.pth`/`.pt`/`.bin` files need it."""
  try:
    import torch
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        f"{path!r} is a PyTorch file, which needs torch: pip install 'dinojax[torch]'. "
        "(.safetensors files need nothing more.)") from e
  return torch


def save_state_dict(state_dict: StateDict, path: str | os.PathLike) -> None:
  """Writes an official-naming state dict as `.pth` (needs torch) or `.safetensors`."""
  path = os.fspath(path)
  if path.endswith(".safetensors"):
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path)
  elif path.endswith((".pth", ".pt")):
    torch = _torch(path)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, path)
  else:
    raise ValueError(f"Unsupported output format {path!r}; use .pth or .safetensors.")


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
def _require(sd: StateDict, key: str) -> np.ndarray:
  if key not in sd:
    raise KeyError(f"Checkpoint is missing key {key!r}.")
  return sd[key]


def infer_config(sd: StateDict, huggingface: bool = False) -> dict[str, Any]:
  """ViT constructor arguments read off an official-naming state dict's shapes.

  Heads are not visible in shapes; every DINOv2 model uses 64-dim heads, so `embed_dim // 64` is
  assumed (override `num_heads` if yours differs). Position-embedding interpolation follows the source:
  official models use offset 0.1 without registers and antialiasing with them; Hugging Face resizes to
  the exact size, antialiased only with registers.
  """
  embed_dim = _require(sd, "cls_token").shape[-1]
  proj = _require(sd, "patch_embed.proj.weight")
  patch_size, in_chans = proj.shape[-1], proj.shape[1]
  depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k))), default=-1)
  if depth == 0:
    raise KeyError("Checkpoint has no transformer blocks (no 'blocks.N.*' keys).")
  grid = math.isqrt(_require(sd, "pos_embed").shape[1] - 1)
  registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
  ffn = "swiglu" if "blocks.0.mlp.w12.weight" in sd else "mlp"
  if ffn == "swiglu":
    hidden = _require(sd, "blocks.0.mlp.w12.weight").shape[0] // 2
    mlp_ratio = hidden * 1.5 / embed_dim
  else:
    hidden = _require(sd, "blocks.0.mlp.fc1.weight").shape[0]
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
    tensor = _require(sd, key)
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


# ---------------------------------------------------------------------------------------------------
# DINO / iBOT heads and whole teachers (official training checkpoints)
# ---------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------
# Talk2DINO projection ψ (the released `*_mlp_infonce.pth` files and their yaml configs)
# ---------------------------------------------------------------------------------------------------
def talk2dino_from_state_dict(sd: StateDict, act: str | None = "tanh") -> tuple[TextToPatchProjection, dict]:
  """(ψ, params) from the official `ProjectionLayer` state dict: `linear_layer.{weight,bias}` then
  `hidden_layers.N.{weight,bias}` (older files: `linear_layer2`)."""
  sd = {k.replace("linear_layer2.", "hidden_layers.0."): v for k, v in sd.items()}
  hidden = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^hidden_layers\.(\d+)\.", k))})
  if hidden != list(range(len(hidden))):
    raise KeyError(f"Talk2DINO checkpoint has non-consecutive hidden layers {hidden}.")
  names = ["linear_layer"] + [f"hidden_layers.{i}" for i in hidden]
  expected = {f"{n}.{kind}" for n in names for kind in ("weight", "bias")}
  missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
  if missing:
    raise KeyError(f"Talk2DINO checkpoint is missing key {missing[0]!r}.")
  if unexpected:
    raise ValueError(f"Talk2DINO checkpoint has keys the projection does not use: {unexpected}.")
  dino_dim = sd["linear_layer.weight"].shape[0]
  for n in names[1:]:
    if sd[f"{n}.weight"].shape != (dino_dim, dino_dim):
      raise ValueError(f"Shape mismatch for '{n}.weight': checkpoint has {sd[f'{n}.weight'].shape}, "
                       f"the projection expects {(dino_dim, dino_dim)}.")
  params = {n.replace(".", "_"): {"kernel": np.asarray(sd[f"{n}.weight"], np.float32).T,
                                  "bias": np.asarray(sd[f"{n}.bias"], np.float32)} for n in names}
  return TextToPatchProjection(dino_dim, len(hidden), act), {"params": params}


def talk2dino_to_state_dict(params: dict) -> StateDict:
  """ψ's params -> the official `ProjectionLayer` state dict (the inverse of
  `talk2dino_from_state_dict`), for `save_state_dict` and the official code."""
  params = params.get("params", params)
  sd = {}
  for name, layer in params.items():
    key = name.replace("hidden_layers_", "hidden_layers.")
    sd[f"{key}.weight"] = np.asarray(layer["kernel"], np.float32).T
    sd[f"{key}.bias"] = np.asarray(layer["bias"], np.float32)
  return sd


def talk2dino_from_checkpoint(path: str | os.PathLike, config_path: str | os.PathLike | None = None):
  """(ψ, params) from a released Talk2DINO `.pth`, with the activation read from its yaml config
  (`model.act`; tanh, the released models' choice, when no config is given)."""
  act = "tanh"
  if config_path is not None:
    with open(config_path) as f:
      model_config = (yaml.safe_load(f) or {}).get("model", {})
    act = model_config.get("act", act)
    if act not in ACTIVATIONS:
      raise ValueError(f"Unknown activation {act!r} in {config_path}.")
  return talk2dino_from_state_dict(load_state_dict(path), act)


# ---------------------------------------------------------------------------------------------------
# CLIP text encoders (Hugging Face `CLIPTextModelWithProjection` / `CLIPModel` naming)
# ---------------------------------------------------------------------------------------------------
def is_openai_clip(sd: StateDict) -> bool:
  """OpenAI's `clip` package naming (also open_clip's): `transformer.resblocks.N.*`, `ln_final`."""
  return "token_embedding.weight" in sd and "ln_final.weight" in sd


def _openai_clip_text_to_hf(sd: StateDict) -> StateDict:
  """The text tower of an OpenAI-naming CLIP state dict in Hugging Face naming: the fused attention
  input projection split into q, k, v; `text_projection` (width, embed) transposed into a Linear
  weight. Vision keys (`visual.*`), `logit_scale` and stored sizes are not text keys: dropped."""
  out = {"text_model.embeddings.token_embedding.weight": _require(sd, "token_embedding.weight"),
         "text_model.embeddings.position_embedding.weight": _require(sd, "positional_embedding"),
         "text_projection.weight": np.asarray(_require(sd, "text_projection")).T,
         "text_model.final_layer_norm.weight": _require(sd, "ln_final.weight"),
         "text_model.final_layer_norm.bias": _require(sd, "ln_final.bias")}
  renames = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
  for key, value in sd.items():
    m = re.match(r"^transformer\.resblocks\.(\d+)\.(.+?)[._](weight|bias)$", key)  # in_proj_weight too
    if m is None:  # embeddings (taken above), vision tower, logit scale, stored sizes
      continue
    layer, name, kind = m.groups()
    prefix = f"text_model.encoder.layers.{layer}."
    if name == "attn.in_proj":
      for n, part in zip("qkv", np.split(np.asarray(value), 3, axis=0)):
        out[f"{prefix}self_attn.{n}_proj.{kind}"] = part
    else:  # an unknown sub-module keeps its name, for the unused-key check to report
      out[f"{prefix}{renames.get(name, name)}.{kind}"] = value
  return out


def clip_text_from_state_dict(sd: StateDict, num_heads: int | None = None):
  """(CLIPTextEncoder, params) from a CLIP state dict in Hugging Face naming (text keys under
  `text_model.`, plus `text_projection.weight`) or OpenAI's (`transformer.resblocks.N.*`,
  `token_embedding`, `positional_embedding`, `ln_final`, `text_projection`); vision keys of a full
  model are ignored. Heads are not visible in shapes: OpenAI's text towers use 64-dim heads,
  assumed unless `num_heads` is given."""
  if is_openai_clip(sd):
    sd = _openai_clip_text_to_hf(sd)
  sd = {k: v for k, v in sd.items() if k.startswith(("text_model.", "text_projection."))}
  prefix = "text_model."
  tokens = _require(sd, prefix + "embeddings.token_embedding.weight")
  positions = _require(sd, prefix + "embeddings.position_embedding.weight")
  projection = _require(sd, "text_projection.weight")
  depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"^text_model\.encoder\.layers\.(\d+)\.", k)))
  width = tokens.shape[1]
  heads = num_heads or width // 64
  model = CLIPTextEncoder(vocab_size=tokens.shape[0], context_length=positions.shape[0], width=width,
                          depth=depth, num_heads=heads, embed_dim=projection.shape[0])
  head_dim = width // heads
  used = {prefix + "embeddings.token_embedding.weight", prefix + "embeddings.position_embedding.weight",
          "text_projection.weight"}

  def take(key):
    used.add(key)
    return np.asarray(_require(sd, key), np.float32)

  def norm(name):
    return {"scale": take(f"{name}.weight"), "bias": take(f"{name}.bias")}

  params = {"token_embedding": np.asarray(tokens, np.float32),
            "position_embedding": np.asarray(positions, np.float32),
            "text_projection": np.asarray(projection, np.float32).T,
            "final_layer_norm": norm(prefix + "final_layer_norm")}
  for i in range(depth):
    p = f"{prefix}encoder.layers.{i}."
    layer = {"layer_norm1": norm(p + "layer_norm1"), "layer_norm2": norm(p + "layer_norm2")}
    for n in "qkv":
      layer[f"{n}_proj"] = {"kernel": take(f"{p}self_attn.{n}_proj.weight").T.reshape(width, heads, head_dim),
                            "bias": take(f"{p}self_attn.{n}_proj.bias").reshape(heads, head_dim)}
    layer["out_proj"] = {"kernel": take(f"{p}self_attn.out_proj.weight").T.reshape(heads, head_dim, width),
                         "bias": take(f"{p}self_attn.out_proj.bias")}
    for n in ("fc1", "fc2"):
      layer[n] = {"kernel": take(f"{p}mlp.{n}.weight").T, "bias": take(f"{p}mlp.{n}.bias")}
    params[f"layers_{i}"] = layer
  unexpected = sorted(set(sd) - used - {prefix + "embeddings.position_ids"})
  if unexpected:
    raise ValueError(f"CLIP checkpoint has text keys the encoder does not use: {unexpected[:8]}")
  return model, {"params": params}


# ---------------------------------------------------------------------------------------------------
# dino.txt's vision head and text encoder (the released `*_vision_head.pth`, `*_text_encoder.pth`)
# ---------------------------------------------------------------------------------------------------
# The layout is written once, as the export: it re-arranges our params into the official tensors, a
# linear map that only moves entries. The import is its transpose (`jax.linear_transpose`), which for
# such a map is its inverse, so the two directions cannot drift apart; `jax.eval_shape` of the export
# gives the keys and shapes a file must have.
def _torch_weight(kernel, inputs: int = 1):
  """Our `Linear` kernel (*inputs, *outputs) -> PyTorch's (outputs, inputs) weight."""
  return kernel.reshape(math.prod(kernel.shape[:inputs]), -1).T


def _torch_norm(name: str, norm: dict) -> dict:
  return {f"{name}.weight": norm["scale"], f"{name}.bias": norm["bias"]}


def _vision_head_tensors(tree: dict) -> dict:
  """`VisionHead` params -> the official `VisionHead` state dict: blocks `block_list.<i>.` (the
  DINOv2 block with SwiGLUFFNAligned's separate `w1`, `w2`), `ln_final`, `linear_projection`."""
  sd = {}
  for name, block in tree.items():
    if not name.startswith("blocks_"):
      continue
    pre, attn, mlp = f"block_list.{name[len('blocks_'):]}.", block["attn"], block["mlp"]
    sd.update(**_torch_norm(pre + "norm1", block["norm1"]), **_torch_norm(pre + "norm2", block["norm2"]))
    sd[pre + "attn.qkv.weight"] = _torch_weight(attn["qkv"]["kernel"])
    sd[pre + "attn.proj.weight"] = _torch_weight(attn["proj"]["kernel"], inputs=2)
    w12 = mlp["w12"]  # (D, 2, F): index 0 is w1, the SiLU-gated half
    sd[pre + "mlp.w1.weight"], sd[pre + "mlp.w2.weight"] = w12["kernel"][:, 0].T, w12["kernel"][:, 1].T
    sd[pre + "mlp.w3.weight"] = _torch_weight(mlp["w3"]["kernel"])
    for key, module in (("attn.qkv", attn["qkv"]), ("attn.proj", attn["proj"]), ("mlp.w3", mlp["w3"])):
      if "bias" in module:
        sd[f"{pre}{key}.bias"] = module["bias"].reshape(-1)
    if "bias" in w12:
      sd[pre + "mlp.w1.bias"], sd[pre + "mlp.w2.bias"] = w12["bias"][0], w12["bias"][1]
    for ls in ("ls1", "ls2"):
      if ls in block:
        sd[f"{pre}{ls}.gamma"] = block[ls]["gamma"]
  if "norm" in tree:
    sd.update(_torch_norm("ln_final", tree["norm"]))
  if "projection" in tree:
    sd["linear_projection.weight"] = tree["projection"].T
  return sd


def _text_encoder_tensors(tree: dict) -> dict:
  """`TextTransformer` params -> the official `TextTower` state dict: the `TextTransformer` under
  `backbone.` (`CausalAttentionBlock`s with a fused `attention.qkv`) and `head.linear_projection`."""
  sd = {"backbone.token_embedding.weight": tree["token_embedding"],
        "backbone.positional_embedding": tree["position_embedding"],
        **_torch_norm("backbone.ln_final", tree["ln_final"])}
  for name, block in tree.items():
    if not name.startswith("blocks_"):
      continue
    pre = f"backbone.blocks.{name[len('blocks_'):]}."
    sd.update(**_torch_norm(pre + "attention_norm", block["layer_norm1"]),
              **_torch_norm(pre + "ffn_norm", block["layer_norm2"]))
    qkv = [block[f"{n}_proj"] for n in "qkv"]
    sd[pre + "attention.qkv.weight"] = jnp.concatenate([_torch_weight(p["kernel"]) for p in qkv])
    if "bias" in qkv[0]:
      sd[pre + "attention.qkv.bias"] = jnp.concatenate([p["bias"].reshape(-1) for p in qkv])
    sd[pre + "attention.proj.weight"] = _torch_weight(block["out_proj"]["kernel"], inputs=2)
    sd[pre + "attention.proj.bias"] = block["out_proj"]["bias"]
    for n in ("fc1", "fc2"):
      sd[f"{pre}feed_forward.{n}.weight"] = _torch_weight(block[n]["kernel"])
      sd[f"{pre}feed_forward.{n}.bias"] = block[n]["bias"]
  if "projection" in tree:
    sd["head.linear_projection.weight"] = tree["projection"].T
  return sd


def _abstract_params(model: nn.Module, *inputs) -> dict:
  return jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), *inputs))["params"])


def _official_to_params(sd: StateDict, abstract: dict, tensors, what: str) -> dict:
  """{"params": ...} of `abstract`'s shapes from `sd`, strictly (errors name the key as the file
  spells it): the transpose of the export `tensors`, as host NumPy arrays."""
  expected = jax.eval_shape(tensors, abstract)
  missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
  if missing:
    raise KeyError(f"{what} checkpoint is missing key {missing[0]!r}"
                   f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}.")
  if unexpected:
    raise ValueError(f"{what} checkpoint has keys the model does not use: {unexpected[:8]}"
                     f"{' ...' if len(unexpected) > 8 else ''}")
  for key, shape in expected.items():
    if tuple(sd[key].shape) != shape.shape:
      raise ValueError(f"Shape mismatch for {key!r} in the {what} checkpoint: it has "
                       f"{tuple(sd[key].shape)}, the model expects {shape.shape}.")
  tensors_in = {key: np.asarray(sd[key], np.float32) for key in expected}
  (params,) = jax.jit(jax.linear_transpose(tensors, abstract))(tensors_in)
  return {"params": jax.tree.map(np.asarray, params)}


def dinotxt_vision_head_from_state_dict(sd: StateDict, head: VisionHead, width: int) -> dict:
  """{"params": ...} of `head` (on `width`-wide backbone tokens) from the official `VisionHead`
  state dict, e.g. the released `dinov2_vitl14_reg4_dinotxt_tet1280d20h24l_vision_head.pth`
  (`block_list.<i>.{norm1,attn.qkv,attn.proj,ls1,norm2,mlp.w1,mlp.w2,mlp.w3,ls2}`, `ln_final`, and
  `linear_projection` when the head projects). Strict: a missing or unused key, or a shape that
  differs, is an error naming the key."""
  abstract = _abstract_params(head, jnp.zeros((1, 2, width)), 1)
  return _official_to_params(sd, abstract, _vision_head_tensors, "dino.txt vision head")


def dinotxt_vision_head_to_state_dict(params: dict) -> StateDict:
  """A `VisionHead`'s params -> the official `VisionHead` state dict, which the official
  `DinoTxt.visual_model.head.load_state_dict(..., strict=True)` accepts."""
  tensors = _vision_head_tensors(params.get("params", params))
  return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def dinotxt_text_encoder_from_state_dict(sd: StateDict, text: TextTransformer) -> dict:
  """{"params": ...} of `text` from the official `TextTower` state dict, e.g. the released
  `dinov2_vitl14_reg4_dinotxt_tet1280d20h24l_text_encoder.pth` (`backbone.token_embedding`,
  `backbone.positional_embedding`, `backbone.blocks.<i>.{attention_norm,attention.qkv,attention.proj,
  ffn_norm,feed_forward.fc1,feed_forward.fc2}`, `backbone.ln_final`, `head.linear_projection`).
  Strict, as `dinotxt_vision_head_from_state_dict`."""
  abstract = _abstract_params(text, jnp.zeros((1, text.context_length), jnp.int32))
  return _official_to_params(sd, abstract, _text_encoder_tensors, "dino.txt text encoder")


def dinotxt_text_encoder_to_state_dict(params: dict) -> StateDict:
  """A `TextTransformer`'s params -> the official `TextTower` state dict, which the official
  `DinoTxt.text_model.load_state_dict(..., strict=True)` accepts."""
  tensors = _text_encoder_tensors(params.get("params", params))
  return {k: np.asarray(v, np.float32) for k, v in tensors.items()}
