"""CLIP text towers (Talk2DINO's text side): CLIP state dicts <-> `TextTransformer` params with CLIP's
options (`models.text.CLIP`). Reads Hugging Face's naming (`CLIPTextModelWithProjection`, `CLIPModel`:
`text_model.*`, `text_projection.weight`) and OpenAI's (the `clip` package's and open_clip's); writes
Hugging Face's. The layout is written once, as the export; the import is its transpose (`state_dicts`)."""

import re

import jax.numpy as jnp
import numpy as np

from dinojax.convert.state_dicts import (StateDict, abstract_params, params_from_export, require,
                                         torch_norm, torch_weight)
from dinojax.models.text import CLIP, TextTransformer


def is_openai_clip(sd: StateDict) -> bool:
  """OpenAI's `clip` package naming (also open_clip's): `transformer.resblocks.N.*`, `ln_final`."""
  return "token_embedding.weight" in sd and "ln_final.weight" in sd


def _openai_clip_text_to_hf(sd: StateDict) -> StateDict:
  """The text tower of an OpenAI-naming CLIP state dict in Hugging Face naming: the fused attention
  input projection split into q, k, v; `text_projection` (width, embed) transposed into a Linear
  weight. Vision keys (`visual.*`), `logit_scale` and stored sizes are not text keys: dropped."""
  out = {"text_model.embeddings.token_embedding.weight": require(sd, "token_embedding.weight"),
         "text_model.embeddings.position_embedding.weight": require(sd, "positional_embedding"),
         "text_projection.weight": np.asarray(require(sd, "text_projection")).T,
         "text_model.final_layer_norm.weight": require(sd, "ln_final.weight"),
         "text_model.final_layer_norm.bias": require(sd, "ln_final.bias")}
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


def _clip_text_tensors(tree: dict) -> dict:
  """`TextTransformer` params -> Hugging Face's `CLIPTextModelWithProjection` state dict: separate
  q, k, v projections, `final_layer_norm`, a bias-free `text_projection` Linear."""
  sd = {"text_model.embeddings.token_embedding.weight": tree["token_embedding"],
        "text_model.embeddings.position_embedding.weight": tree["position_embedding"],
        **torch_norm("text_model.final_layer_norm", tree["ln_final"]),
        "text_projection.weight": tree["projection"].T}
  for name, block in tree.items():
    if not name.startswith("blocks_"):
      continue
    pre = f"text_model.encoder.layers.{name[len('blocks_'):]}."
    sd.update(**torch_norm(pre + "layer_norm1", block["layer_norm1"]),
              **torch_norm(pre + "layer_norm2", block["layer_norm2"]))
    for n in "qkv":
      sd[f"{pre}self_attn.{n}_proj.weight"] = torch_weight(block[f"{n}_proj"]["kernel"])
      sd[f"{pre}self_attn.{n}_proj.bias"] = block[f"{n}_proj"]["bias"].reshape(-1)
    sd[pre + "self_attn.out_proj.weight"] = torch_weight(block["out_proj"]["kernel"], inputs=2)
    sd[pre + "self_attn.out_proj.bias"] = block["out_proj"]["bias"]
    for n in ("fc1", "fc2"):
      sd[f"{pre}mlp.{n}.weight"] = torch_weight(block[n]["kernel"])
      sd[f"{pre}mlp.{n}.bias"] = block[n]["bias"]
  return sd


def clip_text_from_state_dict(sd: StateDict, num_heads: int | None = None) -> tuple[TextTransformer, dict]:
  """(CLIP's `TextTransformer`, params) from a CLIP state dict in Hugging Face naming (text keys under
  `text_model.`, plus `text_projection.weight`) or OpenAI's (`transformer.resblocks.N.*`,
  `token_embedding`, `positional_embedding`, `ln_final`, `text_projection`); vision keys of a full
  model are ignored. Heads are not visible in shapes: OpenAI's text towers use 64-dim heads,
  assumed unless `num_heads` is given. Strict on the text keys, as `params_from_export`."""
  if is_openai_clip(sd):
    sd = _openai_clip_text_to_hf(sd)
  sd = {k: v for k, v in sd.items() if k.startswith(("text_model.", "text_projection."))
        and k != "text_model.embeddings.position_ids"}  # a buffer older transformers saved
  tokens = require(sd, "text_model.embeddings.token_embedding.weight")
  positions = require(sd, "text_model.embeddings.position_embedding.weight")
  projection = require(sd, "text_projection.weight")
  depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"^text_model\.encoder\.layers\.(\d+)\.", k)))
  width = tokens.shape[1]
  model = TextTransformer(**{**CLIP, "vocab_size": tokens.shape[0], "context_length": positions.shape[0],
                             "width": width, "depth": depth, "num_heads": num_heads or width // 64,
                             "embed_dim": projection.shape[0]})
  abstract = abstract_params(model, jnp.zeros((1, model.context_length), jnp.int32))
  return model, params_from_export(sd, abstract, _clip_text_tensors, "CLIP text")


def clip_text_to_state_dict(params: dict) -> StateDict:
  """CLIP's `TextTransformer` params -> Hugging Face's `CLIPTextModelWithProjection` state dict (the
  inverse of `clip_text_from_state_dict`), which its `load_state_dict(..., strict=True)` accepts."""
  tensors = _clip_text_tensors(params.get("params", params))
  return {k: np.asarray(v, np.float32) for k, v in tensors.items()}
