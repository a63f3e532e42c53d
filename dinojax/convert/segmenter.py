"""The released DINOv2 semantic segmentation heads (`dinov2_vits14_ade20k_linear_head.pth`, ...):
mmcv checkpoints of mmseg's `EncoderDecoder` -> the `BNHead` params of `models.segmenter`."""

import numpy as np

from dinojax.convert.state_dicts import StateDict


def segmenter_head_from_state_dict(state_dict: StateDict, embed_dim: int) -> tuple[int, dict]:
  """(layers, head params) from a released head file: mmcv's checkpoint of mmseg's `EncoderDecoder`
  (`decode_head.bn.*`, `decode_head.conv_seg.*`; the prefix optional). The number of blocks it reads
  is its input channels over the backbone's width."""
  state_dict = {k.removeprefix("decode_head."): v for k, v in state_dict.items()}
  required = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "conv_seg.weight",
              "conv_seg.bias")
  missing = [k for k in required if k not in state_dict]
  if missing:
    raise KeyError(f"The segmentation head checkpoint lacks {missing}; it has {sorted(state_dict)[:8]}.")
  kernel = np.asarray(state_dict["conv_seg.weight"], np.float32)
  if kernel.ndim == 4:  # (classes, channels, 1, 1)
    kernel = kernel[:, :, 0, 0]
  channels = kernel.shape[1]
  if channels % embed_dim or np.shape(state_dict["bn.weight"]) != (channels,):
    raise ValueError(f"The head reads {channels} channels (batch norm: {np.shape(state_dict['bn.weight'])}), "
                     f"not a whole number of this backbone's {embed_dim}-wide blocks.")
  f32 = lambda k: np.asarray(state_dict[k], np.float32)
  head = {"scale": f32("bn.weight"), "bias": f32("bn.bias"), "mean": f32("bn.running_mean"),
          "var": f32("bn.running_var"),
          "conv_seg": {"kernel": kernel.T, "bias": f32("conv_seg.bias")}}
  return channels // embed_dim, head
