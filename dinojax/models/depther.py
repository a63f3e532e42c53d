"""The released DINOv2 monocular depth heads (the paper's §7.4 "lin. 1", "lin. 4" and DPT probes on
NYU Depth v2 and KITTI; `torch.hub.load("facebookresearch/dinov2", "dinov2_vits14_ld")` and `_dd`), on a
frozen backbone without registers, at the official inference (`DepthEncoderDecoder.whole_inference`).

The image is centre-padded to a multiple of the patch size; the head reads the raw outputs of 1 or 4
blocks (no final norm), each patch token paired with its block's class token; its depth map is clipped
to the dataset's range and resized (bilinear) to the unpadded image. The released heads are mmcv
checkpoints of the official `DepthEncoderDecoder` (keys `decode_head.*`), read by
`convert.depther_head_from_state_dict`."""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dinojax.models.segmenter import center_padding
from dinojax.models.vit import ViT
from dinojax.ops.numerics import gelu
from dinojax.ops.resize import bilinear_resize

# Metres: the range each head was trained and evaluated in (its config's; the dataset's depth cap). The
# torch.hub `_ld` loaders build every linear head with 80 m bins, the NYU ones too (docs/checkpoints.md).
DEPTH_RANGES = {"nyu": (0.001, 10.0), "kitti": (0.001, 80.0)}
# The blocks read by the 4-block heads ("lin. 4" and DPT), per architecture; "lin. 1" reads the last.
FOUR_BLOCKS = {"vit_small": (2, 5, 8, 11), "vit_base": (2, 5, 8, 11), "vit_large": (4, 11, 17, 23),
               "vit_giant2": (9, 19, 29, 39)}
HEAD_TYPES = ("linear", "dpt")
N_BINS = 256
DPT_CHANNELS = 256

Features = Sequence[tuple[jax.Array, jax.Array]]  # per block: patch tokens (B, h, w, D), class token (B, D)


def _resize(x: jax.Array, size: tuple[int, int], align_corners: bool = False) -> jax.Array:
  return bilinear_resize(x, size, axes=(1, 2), align_corners=align_corners)


def _with_class_token(patch: jax.Array, cls: jax.Array) -> jax.Array:
  """(B, h, w, 2D): each patch token followed by its block's class token."""
  return jnp.concatenate([patch, jnp.broadcast_to(cls[:, None, None], patch.shape)], axis=-1)


class LinearDepthHead(nn.Module):
  """The "lin." heads (the official `BNHead` with `classify=True`; it has no batch norm): the blocks'
  patch+class token maps upsampled 4× (bilinear), concatenated, and a 1×1 convolution (`conv_depth`)
  to scores of 256 depth bins spread evenly over [min_depth, max_depth]; the depth is the bins' mean
  weighted by the scores after Adabins' "linear" normalisation (ReLU, + 0.1, divided by the sum).
  (B, 4h, 4w) depth from `layers` blocks' features."""
  min_depth: float
  max_depth: float
  layers: int = 4
  upsample: int = 4

  @nn.compact
  def __call__(self, features: Features) -> jax.Array:
    if len(features) != self.layers:
      raise ValueError(f"The linear depth head reads {self.layers} blocks; it got {len(features)}.")
    x = jnp.concatenate([_with_class_token(p, c) for p, c in features], axis=-1)
    # Bilinear resizing acts per channel: resizing the concatenation is concatenating the resized maps.
    x = _resize(x, (x.shape[1] * self.upsample, x.shape[2] * self.upsample))
    scores = nn.relu(nn.Dense(N_BINS, name="conv_depth")(x)) + 0.1
    weights = scores / scores.sum(axis=-1, keepdims=True)
    bins = jnp.linspace(self.min_depth, self.max_depth, N_BINS, dtype=jnp.float32)
    return jnp.einsum("bhwk,k->bhw", weights, bins, precision=jax.lax.Precision.HIGHEST)


class _Unpatchify(nn.Module):
  """PyTorch's `ConvTranspose2d(kernel_size=s, stride=s)`: each position becomes an s×s tile."""
  features: int
  factor: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = self.factor
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (s, s, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = jnp.einsum("bhwc,pqco->bhpwqo", x, kernel)
    b, h, _, w, _, o = y.shape
    return y.reshape(b, h * s, w * s, o) + bias


def _conv3x3(features: int, name: str, use_bias: bool = True, strides: int = 1) -> nn.Conv:
  return nn.Conv(features, (3, 3), strides=strides, padding=1, use_bias=use_bias, name=name)


class _ResidualConvUnit(nn.Module):
  """DPT's pre-activation residual unit: x + conv(relu(conv(relu(x)))), 3×3 convolutions, no bias."""
  channels: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = _conv3x3(self.channels, "conv1", use_bias=False)(nn.relu(x))
    return x + _conv3x3(self.channels, "conv2", use_bias=False)(nn.relu(y))


class _FeatureFusion(nn.Module):
  """DPT's fusion block: adds a refined skip map (resized to the running map when their sizes differ),
  refines, upsamples 2× (bilinear, corners aligned) and projects (1×1 convolution)."""
  channels: int
  first: bool = False  # the coarsest block has no skip input

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array | None = None) -> jax.Array:
    if not self.first:
      if skip.shape != x.shape:
        skip = _resize(skip, x.shape[1:3])
      x = x + _ResidualConvUnit(self.channels, name="res_conv_unit1")(skip)
    x = _ResidualConvUnit(self.channels, name="res_conv_unit2")(x)
    x = _resize(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners=True)
    return nn.Conv(self.channels, (1, 1), name="project")(x)


class DPTHead(nn.Module):
  """The DPT heads (Ranftl et al. 2021, "readout: project"), as the released `*_dpt_head.pth` files
  hold them. Reassembly: each of 4 blocks' patch tokens, concatenated with its class token, is
  projected back to D (linear + GELU), then to D/8, D/4, D/2, D channels (1×1) and resampled to 4×,
  2×, 1× and 1/2× the patch grid. Each map goes to `channels` (3×3); fusion runs coarse to fine, then
  a 3×3 convolution + ReLU and the depth convolutions (3×3 to channels/2, 2× upsampling, 3×3 to 32,
  ReLU, 1×1 to 1). Depth = ReLU(output) + min_depth. (B, 32⌈h/2⌉, 32⌈w/2⌉) depth."""
  min_depth: float
  max_depth: float
  channels: int = DPT_CHANNELS
  layers = 4

  @nn.compact
  def __call__(self, features: Features) -> jax.Array:
    if len(features) != self.layers:
      raise ValueError(f"The DPT head reads {self.layers} blocks; it got {len(features)}.")
    maps = []
    for i, (patch, cls) in enumerate(features):
      dim = patch.shape[-1]
      x = gelu(nn.Dense(dim, name=f"readout_projects_{i}")(_with_class_token(patch, cls)))
      width = dim // 2 ** (3 - i)
      x = nn.Conv(width, (1, 1), name=f"projects_{i}")(x)
      if i < 2:
        x = _Unpatchify(width, 4 // 2 ** i, name=f"resize_layers_{i}")(x)
      elif i == 3:
        x = _conv3x3(width, f"resize_layers_{i}", strides=2)(x)
      maps.append(_conv3x3(self.channels, f"convs_{i}", use_bias=False)(x))
    x = _FeatureFusion(self.channels, first=True, name="fusion_blocks_0")(maps[3])
    for i in range(1, 4):
      x = _FeatureFusion(self.channels, name=f"fusion_blocks_{i}")(x, maps[3 - i])
    x = nn.relu(_conv3x3(self.channels, "project")(x))
    x = _conv3x3(self.channels // 2, "conv_depth_0")(x)
    x = _resize(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners=True)
    x = nn.relu(_conv3x3(32, "conv_depth_2")(x))
    x = nn.Conv(1, (1, 1), name="conv_depth_4")(x)[..., 0]
    return nn.relu(x) + self.min_depth


class Depther(nn.Module):
  """(B, H, W, 3) ImageNet-normalised images -> (B, H, W) depth in metres. Params {"backbone", "head"}.
  `flip=True` is the evaluation's test-time augmentation: the mean of the depth of the image and the
  mirrored depth of its mirror image."""
  backbone: ViT
  head: LinearDepthHead | DPTHead
  blocks: tuple[int, ...]  # the blocks the head reads, in order

  def __call__(self, images: jax.Array, flip: bool = False) -> jax.Array:
    depth = self.whole_inference(images)
    if flip:
      depth = (depth + self.whole_inference(images[:, :, ::-1])[:, :, ::-1]) / 2
    return depth

  def whole_inference(self, images: jax.Array) -> jax.Array:
    """The official `whole_inference`: one pass over the centre-padded image, depth clipped to the
    head's range and resized to the image."""
    features = self.backbone.get_intermediate_layers(
        center_padding(images, self.backbone.patch_size), self.blocks, reshape=True,
        return_class_token=True, norm=False)
    features = [(p.astype(jnp.float32), c.astype(jnp.float32)) for p, c in features]
    depth = jnp.clip(self.head(features), self.head.min_depth, self.head.max_depth)
    return _resize(depth, images.shape[1:3])


def depth_range(dataset: str) -> tuple[float, float]:
  """(min, max) depth in metres of the heads trained on `dataset` ("nyu" or "kitti")."""
  if dataset not in DEPTH_RANGES:
    raise ValueError(f"Unknown depth dataset {dataset!r}; the released heads are for {sorted(DEPTH_RANGES)}.")
  return DEPTH_RANGES[dataset]


def official_blocks(arch: str, depth: int, layers: int) -> tuple[int, ...]:
  """The blocks a released head reads from a backbone of architecture `arch` (`vit_small`, ...) with
  `depth` blocks: the last for 1-block heads, `FOUR_BLOCKS[arch]` for 4-block ones."""
  if layers not in (1, 4):
    raise ValueError(f"The released depth heads read 1 or 4 blocks, not {layers}.")
  blocks = (depth - 1,) if layers == 1 else FOUR_BLOCKS[arch]
  if max(blocks) >= depth:
    raise ValueError(f"The {arch} depth head reads blocks {blocks}; this backbone has {depth}.")
  return blocks


def check_head_type(head_type: str) -> None:
  if head_type not in HEAD_TYPES:
    raise ValueError(f"Unknown depth head type {head_type!r}; choose one of {HEAD_TYPES}.")


def new_head(head_type: str, *, depth_range: tuple[float, float], layers: int = 4) -> LinearDepthHead | DPTHead:
  """The head of a released architecture: "linear" reading `layers` blocks, or "dpt" (4 blocks)."""
  check_head_type(head_type)
  if head_type == "linear":
    return LinearDepthHead(*depth_range, layers=layers)
  return DPTHead(*depth_range)


def init_head(head: LinearDepthHead | DPTHead, embed_dim: int, seed: int = 0) -> dict:
  """Random params of a depth head on `embed_dim`-wide blocks: LeCun-normal kernels, zero biases.
  Drawn in NumPy: XLA compiles one random draw per parameter shape, far slower than drawing them."""
  features = [(jnp.zeros((1, 1, 1, embed_dim)), jnp.zeros((1, embed_dim)))] * head.layers
  shapes = jax.eval_shape(head.init, jax.random.key(0), features)["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == "bias":
      return np.zeros(leaf.shape, np.float32)
    fan_in = math.prod(leaf.shape[:-1])
    return (rng.standard_normal(leaf.shape) / math.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)
