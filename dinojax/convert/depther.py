"""The released DINOv2 depth heads (`dinov2_vits14_nyu_linear4_head.pth`, `..._kitti_dpt_head.pth`, ...):
mmcv checkpoints of the official `DepthEncoderDecoder` (keys `decode_head.*`) -> the linear or DPT head
of `models.depther` and its params."""

import numpy as np

from dinojax.convert.state_dicts import StateDict
from dinojax.models import depther


def _dpt_layout(dim: int, channels: int) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """Official key (after `decode_head.`) -> (param path, PyTorch shape) of a DPT head on `dim`-wide
  blocks with `channels` fused channels."""
  layout = {}

  def conv(key, path, out, inp, k, bias=True):
    layout[f"{key}.weight"] = ((*path, "kernel"), (out, inp, k, k))
    if bias:
      layout[f"{key}.bias"] = ((*path, "bias"), (out,))

  for i in range(4):
    width = dim // 2 ** (3 - i)
    layout[f"reassemble_blocks.readout_projects.{i}.0.weight"] = ((f"readout_projects_{i}", "kernel"), (dim, 2 * dim))
    layout[f"reassemble_blocks.readout_projects.{i}.0.bias"] = ((f"readout_projects_{i}", "bias"), (dim,))
    conv(f"reassemble_blocks.projects.{i}.conv", (f"projects_{i}",), width, dim, 1)
    if i < 2:  # ConvTranspose2d weights are (in, out, k, k)
      conv(f"reassemble_blocks.resize_layers.{i}", (f"resize_layers_{i}",), width, width, 4 // 2 ** i)
    elif i == 3:
      conv(f"reassemble_blocks.resize_layers.{i}", (f"resize_layers_{i}",), width, width, 3)
    conv(f"convs.{i}.conv", (f"convs_{i}",), channels, width, 3, bias=False)
    block = f"fusion_blocks_{i}"
    conv(f"fusion_blocks.{i}.project.conv", (block, "project"), channels, channels, 1)
    for unit in ("res_conv_unit1", "res_conv_unit2")[i == 0:]:
      for c in ("conv1", "conv2"):
        conv(f"fusion_blocks.{i}.{unit}.{c}.conv", (block, unit, c), channels, channels, 3, bias=False)
  conv("project.conv", ("project",), channels, channels, 3)
  conv("conv_depth.head.0", ("conv_depth_0",), channels // 2, channels, 3)
  conv("conv_depth.head.2", ("conv_depth_2",), 32, channels // 2, 3)
  conv("conv_depth.head.4", ("conv_depth_4",), 1, 32, 1)
  return layout


def _to_param(key: str, value: np.ndarray) -> np.ndarray:
  """A PyTorch weight in flax's layout: Linear (out, in) -> (in, out); Conv2d (out, in, kh, kw) ->
  (kh, kw, in, out); ConvTranspose2d (in, out, kh, kw) -> (kh, kw, in, out)."""
  if value.ndim == 2:
    return value.T
  if value.ndim == 4:
    return value.transpose(2, 3, 0, 1) if ".resize_layers.0." in key or ".resize_layers.1." in key \
        else value.transpose(2, 3, 1, 0)
  return value


def _linear_head(state_dict: dict, embed_dim: int, depth_range: tuple[float, float]):
  weight = state_dict["conv_depth.weight"]
  weight = weight[:, :, 0, 0] if weight.ndim == 4 else weight  # (bins, channels[, 1, 1])
  layers, rest = divmod(weight.shape[1], 2 * embed_dim)
  if weight.shape[0] != depther.N_BINS or rest or layers not in (1, 4):
    raise ValueError(f"The linear depth head's conv_depth.weight is {tuple(state_dict['conv_depth.weight'].shape)}; "
                     f"on this {embed_dim}-wide backbone it must be ({depther.N_BINS}, 2 × {embed_dim} × 1 "
                     "or 4 blocks[, 1, 1]): is it the head of another backbone?")
  bias = state_dict["conv_depth.bias"]
  if bias.shape != (depther.N_BINS,):
    raise ValueError(f"The linear depth head's conv_depth.bias is {tuple(bias.shape)}, "
                     f"not ({depther.N_BINS},).")
  head = depther.LinearDepthHead(*depth_range, layers=layers)
  return head, {"conv_depth": {"kernel": weight.T, "bias": bias}}


def _dpt_head(state_dict: dict, embed_dim: int, depth_range: tuple[float, float]):
  channels = state_dict["project.conv.weight"].shape[0]
  layout = _dpt_layout(embed_dim, channels)
  missing = sorted(set(layout) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(layout))
  if missing or unexpected:
    raise KeyError(f"The DPT depth head checkpoint lacks {missing[:6]} and has unexpected {unexpected[:6]}.")
  params = {}
  for key, (path, shape) in layout.items():
    if state_dict[key].shape != shape:
      raise ValueError(f"decode_head.{key} is {tuple(state_dict[key].shape)}; a DPT head on this "
                       f"{embed_dim}-wide backbone with {channels} channels needs {shape}: is it the head "
                       "of another backbone?")
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = _to_param(key, state_dict[key])
  return depther.DPTHead(*depth_range, channels=channels), params


def depther_head_from_state_dict(
    state_dict: StateDict, *, embed_dim: int, head_type: str,
    depth_range: tuple[float, float]) -> tuple[depther.LinearDepthHead | depther.DPTHead, dict]:
  """(head, params) from a released head file (`dinov2_vits14_nyu_linear4_head.pth`,
  `..._kitti_dpt_head.pth`, ...: mmcv's checkpoint of the official `DepthEncoderDecoder`, keys
  `decode_head.*`, the prefix optional). A linear head's blocks (1 or 4) come from its shapes."""
  depther.check_head_type(head_type)
  state_dict = {k.removeprefix("decode_head."): np.asarray(v, np.float32) for k, v in state_dict.items()}
  found = "dpt" if "project.conv.weight" in state_dict else "linear" if "conv_depth.weight" in state_dict else None
  if found is None:
    raise KeyError(f"The file holds no depth head (no decode_head.conv_depth.weight or "
                   f"decode_head.project.conv.weight); its keys: {sorted(state_dict)[:6]}.")
  if found != head_type:
    raise ValueError(f"head_type={head_type!r}, but the file holds a {found} depth head.")
  if head_type == "linear":
    extra = sorted(set(state_dict) - {"conv_depth.weight", "conv_depth.bias"})
    if extra or "conv_depth.bias" not in state_dict:
      raise KeyError(f"A linear depth head has decode_head.conv_depth.weight and .bias only; this file "
                     f"{'also has ' + str(extra[:6]) if extra else 'lacks the bias'}.")
    return _linear_head(state_dict, embed_dim, depth_range)
  return _dpt_head(state_dict, embed_dim, depth_range)
