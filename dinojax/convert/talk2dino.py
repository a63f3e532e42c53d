"""Talk2DINO's projection ψ (the released `*_mlp_infonce.pth` files and their yaml configs): the official
`ProjectionLayer` state dict <-> `TextToPatchProjection` params."""

import os
import re

import numpy as np
import yaml

from dinojax.convert.state_dicts import StateDict, load_state_dict
from dinojax.models.talk2dino import ACTIVATIONS, TextToPatchProjection


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
