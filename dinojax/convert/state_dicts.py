"""What every converter shares: reading and writing state dict files (`.pth` needs torch, an optional
dependency; `.safetensors` needs nothing more), the strict key check, and the import of a layout that
is written once, as its export."""

import math
import os

import flax.linen as nn
import jax
import numpy as np
from safetensors.numpy import load_file, save_file

StateDict = dict[str, np.ndarray]

_WRAPPERS = ("teacher", "student", "model", "state_dict")


def import_torch(path: str):
  """PyTorch, an optional dependency: only `.pth`/`.pt`/`.bin` files need it."""
  try:
    import torch
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        f"{path!r} is a PyTorch file, which needs torch: pip install 'dinojax[torch]'. "
        "(.safetensors files need nothing more.)") from e
  return torch


def load_state_dict(path: str | os.PathLike) -> StateDict:
  """Reads a `.pth`/`.pt` or `.safetensors` checkpoint into a dict of NumPy arrays."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Checkpoint not found: {path}")
  if path.endswith(".safetensors"):
    return dict(load_file(path))
  if path.endswith((".pth", ".pt", ".bin")):
    torch = import_torch(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in _WRAPPERS:
      if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
        obj = obj[wrapper]
        break
    # detach: a file saved from live parameters holds tensors that require grad.
    return {k: (v.float() if v.is_floating_point() else v).detach().numpy() for k, v in obj.items()}
  raise ValueError(f"Unsupported checkpoint format {path!r}; expected .pth, .pt, .bin or .safetensors.")


def save_state_dict(state_dict: StateDict, path: str | os.PathLike) -> None:
  """Writes an official-naming state dict as `.pth` (needs torch) or `.safetensors`."""
  path = os.fspath(path)
  if path.endswith(".safetensors"):
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path)
  elif path.endswith((".pth", ".pt")):
    torch = import_torch(path)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, path)
  else:
    raise ValueError(f"Unsupported output format {path!r}; use .pth or .safetensors.")


def require(sd: StateDict, key: str) -> np.ndarray:
  if key not in sd:
    raise KeyError(f"Checkpoint is missing key {key!r}.")
  return sd[key]


# ---------------------------------------------------------------------------------------------------
# Layouts written once, as the export
# ---------------------------------------------------------------------------------------------------
# An export re-arranges our params into the official tensors, a linear map that only moves entries. The
# import is its transpose (`jax.linear_transpose`), which for such a map is its inverse, so the two
# directions cannot drift apart; `jax.eval_shape` of the export gives the keys and shapes a file must have.
def torch_weight(kernel, inputs: int = 1):
  """Our `Linear` kernel (*inputs, *outputs) -> PyTorch's (outputs, inputs) weight."""
  return kernel.reshape(math.prod(kernel.shape[:inputs]), -1).T


def torch_norm(name: str, norm: dict) -> dict:
  """A LayerNorm's {"scale", "bias"} -> PyTorch's `<name>.weight`, `<name>.bias`."""
  return {f"{name}.weight": norm["scale"], f"{name}.bias": norm["bias"]}


def abstract_params(model: nn.Module, *inputs) -> dict:
  """`model`'s params tree as shapes, for `params_from_export`."""
  return jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), *inputs))["params"])


def params_from_export(sd: StateDict, abstract: dict, export, what: str) -> dict:
  """{"params": ...} of `abstract`'s shapes from `sd`, strictly (errors name the key as the file
  spells it): the transpose of `export` (params -> official tensors), as host NumPy arrays."""
  expected = jax.eval_shape(export, abstract)
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
  (params,) = jax.jit(jax.linear_transpose(export, abstract))(tensors_in)
  return {"params": jax.tree.map(np.asarray, params)}
