"""OpenAI-naming CLIP checkpoints (the `clip` package's state dict) convert to the same text tower as
the Hugging Face naming of the same random weights, match `transformers`, and export back to the
Hugging Face state dict exactly."""

import jax
import numpy as np
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from dinojax import convert


def _hf_state_dict():
  torch.manual_seed(1)
  config = CLIPTextConfig(vocab_size=500, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
                          hidden_act="quick_gelu", eos_token_id=2)
  model = CLIPTextModelWithProjection(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.02)
  return model, {k: v.numpy() for k, v in model.state_dict().items()}


def _openai_naming(hf):
  """The `clip` package's names for the same tensors (a full model: vision keys and scalars too)."""
  sd = {"token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "text_projection": hf["text_projection.weight"].T,
        "ln_final.weight": hf["text_model.final_layer_norm.weight"],
        "ln_final.bias": hf["text_model.final_layer_norm.bias"],
        "logit_scale": np.array(4.6), "visual.proj": np.zeros((8, 32)), "context_length": np.array(77)}
  for i in range(2):
    h, o = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
    for kind in ("weight", "bias"):
      sd[o + f"attn.in_proj_{kind}"] = np.concatenate([hf[h + f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
      for ours, theirs in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                           ("mlp.c_proj", "mlp.fc2"), ("attn.out_proj", "self_attn.out_proj")):
        sd[o + f"{ours}.{kind}"] = hf[h + f"{theirs}.{kind}"]
  return sd


@pytest.mark.slow
def test_openai_naming_equals_huggingface_naming():
  hf_model, hf = _hf_state_dict()
  openai = _openai_naming(hf)
  assert convert.is_openai_clip(openai) and not convert.is_openai_clip(hf)
  model_a, params_a = convert.clip_text_from_state_dict(hf, num_heads=2)
  model_b, params_b = convert.clip_text_from_state_dict(openai, num_heads=2)
  assert model_a == model_b
  leaves_a, tree_a = jax.tree.flatten(params_a)
  leaves_b, tree_b = jax.tree.flatten(params_b)
  assert tree_a == tree_b
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(a, b)
  ids = np.array([[5, 17, 300, 499, 0, 0], [9, 8, 7, 6, 5, 499]])
  with torch.no_grad():
    ref = hf_model(input_ids=torch.from_numpy(ids)).text_embeds.numpy()
  np.testing.assert_allclose(model_b.apply(params_b, ids)["text_embeds"], ref, atol=1e-4)


def test_openai_naming_errors_name_the_key():
  _, hf = _hf_state_dict()
  openai = _openai_naming(hf)
  del openai["positional_embedding"]
  with pytest.raises(KeyError, match="positional_embedding"):
    convert.clip_text_from_state_dict(openai)
  openai = {**_openai_naming(hf), "transformer.resblocks.0.attn.extra.weight": np.zeros(3)}
  with pytest.raises(ValueError, match="attn.extra.weight"):
    convert.clip_text_from_state_dict(openai, num_heads=2)


def test_export_gives_back_the_huggingface_state_dict():
  hf_model, hf = _hf_state_dict()
  _, params = convert.clip_text_from_state_dict(_openai_naming(hf), num_heads=2)
  exported = convert.clip_text_to_state_dict(params)
  assert exported.keys() == hf.keys()
  for key, value in hf.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  hf_model.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
