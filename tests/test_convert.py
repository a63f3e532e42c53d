"""Parity with Hugging Face `transformers` (an independent implementation) on random weights."""

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import (Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig,
                          Dinov2WithRegistersModel)

from dinojax import convert, hub

GRIDS = [(98, 98), (224, 224), (280, 196)]  # native 7×7 grid, a larger one, non-square


def _hf_model(registers: bool, swiglu: bool = False):
  torch.manual_seed(0)
  common = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=98,
                patch_size=14, layerscale_value=0.5)
  if registers:
    model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=4, **common))
  else:
    model = Dinov2Model(Dinov2Config(use_swiglu_ffn=swiglu, **common))
  with torch.no_grad():  # Make every tensor, biases and tokens included, non-trivial.
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.02)
  return model.eval()


def _state_dict(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


def _legacy_hf_naming(sd):
  """The key layout of Hugging Face hub files written by transformers 4."""
  out = {}
  for k, v in sd.items():
    k = re.sub(r"attention\.([qkv])_proj", lambda m: "attention.attention." +
               {"q": "query", "k": "key", "v": "value"}[m.group(1)], k)
    k = k.replace("attention.o_proj", "attention.output.dense").replace("mlp.down_proj", "mlp.weights_out")
    out[k] = v
  for prefix in {k.rsplit("mlp.gate_proj", 1)[0] for k in out if "mlp.gate_proj" in k}:
    for kind in ("weight", "bias"):
      gate, up = out.pop(f"{prefix}mlp.gate_proj.{kind}"), out.pop(f"{prefix}mlp.up_proj.{kind}")
      out[f"{prefix}mlp.weights_in.{kind}"] = np.concatenate([gate, up])
  return out


def _assert_parity(hf, model, params, grids=GRIDS):
  r = model.num_register_tokens
  for h, w in grids:
    x = np.random.default_rng(h + w).normal(size=(2, h, w, 3)).astype(np.float32)
    with torch.no_grad():
      ref = hf(torch.from_numpy(x).permute(0, 3, 1, 2)).last_hidden_state.numpy()
    out = model.apply(params, jnp.asarray(x))
    np.testing.assert_allclose(out["x_norm_clstoken"], ref[:, 0], atol=1e-4, err_msg=f"{h}x{w}")
    np.testing.assert_allclose(out["x_norm_regtokens"], ref[:, 1:1 + r], atol=1e-4)
    np.testing.assert_allclose(out["x_norm_patchtokens"], ref[:, 1 + r:], atol=1e-4, err_msg=f"{h}x{w}")


@pytest.mark.slow
@pytest.mark.parametrize("registers,swiglu", [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("naming", ["transformers", "legacy_hub_file", "official"])
def test_parity_with_transformers(registers, swiglu, naming):
  hf = _hf_model(registers, swiglu)
  sd = _state_dict(hf)
  if naming == "legacy_hub_file":
    sd = _legacy_hf_naming(sd)
  if naming == "official":
    # Our export is the official layout; read back with Hugging Face's interpolation convention.
    sd = convert.params_to_state_dict(convert.from_state_dict(sd, num_heads=2)[1])
    assert "blocks.0.attn.qkv.weight" in sd and "blocks.0.ls1.gamma" in sd
    model, params = convert.from_state_dict(sd, num_heads=2, interpolate_offset=0.0,
                                            interpolate_antialias=registers)
  else:
    model, params = convert.from_state_dict(sd, num_heads=2)
  assert (model.num_register_tokens, model.ffn) == (4 if registers else 0, "swiglu" if swiglu else "mlp")
  _assert_parity(hf, model, params)


@pytest.mark.parametrize("registers,swiglu", [(False, False), (False, True), (True, False)])
def test_export_round_trips_exactly(registers, swiglu):
  official = convert.to_official_naming(_state_dict(_hf_model(registers, swiglu)))
  _, params = convert.from_state_dict(official, num_heads=2)
  exported = convert.params_to_state_dict(params)
  assert set(exported) == set(official)
  for k in official:
    np.testing.assert_array_equal(exported[k], official[k], err_msg=k)
  # A scanned model's params hold the blocks stacked on a leading depth axis, and export the same.
  _, stacked = convert.from_state_dict(official, num_heads=2, scan_blocks=True)
  assert "blocks_0" not in stacked["params"]
  assert {p.shape[0] for p in jax.tree.leaves(stacked["params"]["blocks"])} == {2}
  exported = convert.params_to_state_dict(stacked)
  assert set(exported) == set(official)
  for k in official:
    np.testing.assert_array_equal(exported[k], official[k], err_msg=k)


def test_infers_official_architecture_and_interpolation():
  official = convert.to_official_naming(_state_dict(_hf_model(registers=True)))
  cfg = convert.infer_config(official)
  assert cfg["num_register_tokens"] == 4 and cfg["img_size"] == 98 and cfg["patch_size"] == 14
  assert (cfg["interpolate_offset"], cfg["interpolate_antialias"]) == (0.0, True)
  without = {k: v for k, v in official.items() if k != "register_tokens"}
  assert (convert.infer_config(without)["interpolate_offset"],
          convert.infer_config(without)["interpolate_antialias"]) == (0.1, False)


def test_training_checkpoint_prefixes_and_chunked_blocks():
  official = convert.params_to_state_dict(convert.from_state_dict(_state_dict(_hf_model(False)),
                                                                  num_heads=2)[1])
  chunked = {("backbone." + re.sub(r"^blocks\.(\d+)\.", r"blocks.0.\1.", k)): v
             for k, v in official.items()}
  chunked["dino_head.mlp.0.weight"] = np.zeros((4, 4), np.float32)
  _, params = convert.from_state_dict(chunked, num_heads=2)
  exported = convert.params_to_state_dict(params)
  for k in official:
    np.testing.assert_array_equal(exported[k], official[k])


def test_file_round_trip_pth_and_safetensors(tmp_path):
  hf = _hf_model(registers=True)
  _, params = convert.from_state_dict(_state_dict(hf), num_heads=2)
  for name in ("model.pth", "model.safetensors"):
    path = tmp_path / name
    convert.save_state_dict(convert.params_to_state_dict(params), path)
    model, loaded = convert.from_checkpoint(path, num_heads=2)
    for a, b in zip(*(sorted(convert.params_to_state_dict(p).items()) for p in (params, loaded))):
      np.testing.assert_array_equal(a[1], b[1])
  # Hugging Face's own safetensors file loads too, into unrolled and scanned blocks alike.
  hf.save_pretrained(tmp_path / "hf")
  for scan_blocks in (False, True):
    model, loaded = convert.from_checkpoint(tmp_path / "hf" / "model.safetensors", num_heads=2,
                                            scan_blocks=scan_blocks)
    _assert_parity(hf, model, loaded, grids=[(98, 98)])


def test_missing_key_is_named():
  sd = convert.to_official_naming(_state_dict(_hf_model(False)))
  del sd["blocks.1.norm2.bias"]
  with pytest.raises(KeyError, match=r"blocks\.1\.norm2\.bias"):
    convert.from_state_dict(sd, num_heads=2)
  hf_sd = _state_dict(_hf_model(False))
  del hf_sd["encoder.layer.0.attention.k_proj.weight"]
  with pytest.raises(KeyError, match=r"encoder\.layer\.0\.attention\.k_proj\.weight"):
    convert.from_state_dict(hf_sd, num_heads=2)


def test_shape_mismatch_names_key_and_both_shapes():
  sd = convert.to_official_naming(_state_dict(_hf_model(False)))
  sd["blocks.1.mlp.fc1.weight"] = np.zeros((256, 64), np.float32)
  with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc1\.weight.*\(256, 64\).*\(512, 128\)"):
    convert.from_state_dict(sd, num_heads=2)


def test_unexpected_keys_are_refused():
  sd = convert.to_official_naming(_state_dict(_hf_model(False)))
  sd["head.weight"] = np.zeros((10, 128), np.float32)
  with pytest.raises(ValueError, match="head.weight"):
    convert.from_state_dict(sd, num_heads=2)


def test_unknown_file_format_and_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    convert.load_state_dict(tmp_path / "nope.pth")
  (tmp_path / "weights.npz").write_bytes(b"")
  with pytest.raises(ValueError, match="Unsupported checkpoint format"):
    convert.load_state_dict(tmp_path / "weights.npz")


def test_pytorch_files_without_torch_say_what_to_install(tmp_path, monkeypatch):
  (tmp_path / "model.pth").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)  # as on a base install
  hint = r"needs torch: pip install 'dinojax\[torch\]'\. \(\.safetensors files need nothing more\.\)"
  with pytest.raises(ModuleNotFoundError, match=hint):
    convert.load_state_dict(tmp_path / "model.pth")
  with pytest.raises(ModuleNotFoundError, match=hint):
    convert.save_state_dict({"w": np.zeros(2)}, tmp_path / "out.pth")


def test_hub_refuses_a_checkpoint_of_another_architecture(tmp_path):
  model, params = hub.dinov2("vits14_reg", depth=1)
  assert (model.embed_dim, model.num_heads, model.num_register_tokens, model.img_size) == (384, 6, 4, 518)
  path = tmp_path / "vits14_reg.pth"
  convert.save_state_dict(convert.params_to_state_dict(params), path)
  same, loaded = hub.dinov2("vits14_reg", checkpoint=path, depth=1)
  np.testing.assert_array_equal(loaded["params"]["pos_embed"], params["params"]["pos_embed"])
  with pytest.raises(ValueError, match=r"Shape mismatch for '[\w.]+': checkpoint has \(384,?.*\), "
                                       r"the model expects \(768,?.*\)"):
    hub.dinov2("vitb14_reg", checkpoint=path, depth=1)
  with pytest.raises(ValueError, match="keys the model does not use: \\['register_tokens'\\]"):
    hub.dinov2("vits14", checkpoint=path, depth=1)
  with pytest.raises(ValueError, match="Unknown DINOv2 backbone"):
    hub.dinov2("vitx14")
