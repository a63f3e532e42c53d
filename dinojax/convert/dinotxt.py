"""dino.txt's vision head and text encoder (the released `*_vision_head.pth`, `*_text_encoder.pth`):
the official `VisionHead` and `TextTower` state dicts <-> `VisionHead` and `TextTransformer` params, both
ways. Each layout is written once, as the export; the import is its transpose (`state_dicts`)."""

import jax.numpy as jnp
import numpy as np

from dinojax.convert.state_dicts import (StateDict, abstract_params, params_from_export, torch_norm,
                                         torch_weight)
from dinojax.models.dinotxt import VisionHead
from dinojax.models.text import TextTransformer


def _vision_head_tensors(tree: dict) -> dict:
  """`VisionHead` params -> the official `VisionHead` state dict: blocks `block_list.<i>.` (the
  DINOv2 block with SwiGLUFFNAligned's separate `w1`, `w2`), `ln_final`, `linear_projection`."""
  sd = {}
  for name, block in tree.items():
    if not name.startswith("blocks_"):
      continue
    pre, attn, mlp = f"block_list.{name[len('blocks_'):]}.", block["attn"], block["mlp"]
    sd.update(**torch_norm(pre + "norm1", block["norm1"]), **torch_norm(pre + "norm2", block["norm2"]))
    sd[pre + "attn.qkv.weight"] = torch_weight(attn["qkv"]["kernel"])
    sd[pre + "attn.proj.weight"] = torch_weight(attn["proj"]["kernel"], inputs=2)
    w12 = mlp["w12"]  # (D, 2, F): index 0 is w1, the SiLU-gated half
    sd[pre + "mlp.w1.weight"], sd[pre + "mlp.w2.weight"] = w12["kernel"][:, 0].T, w12["kernel"][:, 1].T
    sd[pre + "mlp.w3.weight"] = torch_weight(mlp["w3"]["kernel"])
    for key, module in (("attn.qkv", attn["qkv"]), ("attn.proj", attn["proj"]), ("mlp.w3", mlp["w3"])):
      if "bias" in module:
        sd[f"{pre}{key}.bias"] = module["bias"].reshape(-1)
    if "bias" in w12:
      sd[pre + "mlp.w1.bias"], sd[pre + "mlp.w2.bias"] = w12["bias"][0], w12["bias"][1]
    for ls in ("ls1", "ls2"):
      if ls in block:
        sd[f"{pre}{ls}.gamma"] = block[ls]["gamma"]
  if "norm" in tree:
    sd.update(torch_norm("ln_final", tree["norm"]))
  if "projection" in tree:
    sd["linear_projection.weight"] = tree["projection"].T
  return sd


def _text_encoder_tensors(tree: dict) -> dict:
  """`TextTransformer` params -> the official `TextTower` state dict: the `TextTransformer` under
  `backbone.` (`CausalAttentionBlock`s with a fused `attention.qkv`) and `head.linear_projection`."""
  sd = {"backbone.token_embedding.weight": tree["token_embedding"],
        "backbone.positional_embedding": tree["position_embedding"],
        **torch_norm("backbone.ln_final", tree["ln_final"])}
  for name, block in tree.items():
    if not name.startswith("blocks_"):
      continue
    pre = f"backbone.blocks.{name[len('blocks_'):]}."
    sd.update(**torch_norm(pre + "attention_norm", block["layer_norm1"]),
              **torch_norm(pre + "ffn_norm", block["layer_norm2"]))
    qkv = [block[f"{n}_proj"] for n in "qkv"]
    sd[pre + "attention.qkv.weight"] = jnp.concatenate([torch_weight(p["kernel"]) for p in qkv])
    if "bias" in qkv[0]:
      sd[pre + "attention.qkv.bias"] = jnp.concatenate([p["bias"].reshape(-1) for p in qkv])
    sd[pre + "attention.proj.weight"] = torch_weight(block["out_proj"]["kernel"], inputs=2)
    sd[pre + "attention.proj.bias"] = block["out_proj"]["bias"]
    for n in ("fc1", "fc2"):
      sd[f"{pre}feed_forward.{n}.weight"] = torch_weight(block[n]["kernel"])
      sd[f"{pre}feed_forward.{n}.bias"] = block[n]["bias"]
  if "projection" in tree:
    sd["head.linear_projection.weight"] = tree["projection"].T
  return sd


def dinotxt_vision_head_from_state_dict(sd: StateDict, head: VisionHead, width: int) -> dict:
  """{"params": ...} of `head` (on `width`-wide backbone tokens) from the official `VisionHead`
  state dict, e.g. the released `dinov2_vitl14_reg4_dinotxt_tet1280d20h24l_vision_head.pth`
  (`block_list.<i>.{norm1,attn.qkv,attn.proj,ls1,norm2,mlp.w1,mlp.w2,mlp.w3,ls2}`, `ln_final`, and
  `linear_projection` when the head projects). Strict: a missing or unused key, or a shape that
  differs, is an error naming the key."""
  abstract = abstract_params(head, jnp.zeros((1, 2, width)), 1)
  return params_from_export(sd, abstract, _vision_head_tensors, "dino.txt vision head")


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
  abstract = abstract_params(text, jnp.zeros((1, text.context_length), jnp.int32))
  return params_from_export(sd, abstract, _text_encoder_tensors, "dino.txt text encoder")


def dinotxt_text_encoder_to_state_dict(params: dict) -> StateDict:
  """A `TextTransformer`'s params -> the official `TextTower` state dict, which the official
  `DinoTxt.text_model.load_state_dict(..., strict=True)` accepts."""
  tensors = _text_encoder_tensors(params.get("params", params))
  return {k: np.asarray(v, np.float32) for k, v in tensors.items()}
