"""The released DINOv2 semantic segmentation heads (the paper's §7.4 "linear" and "+ms" heads on
ADE20k and VOC2012, `dinov2_vits14_ade20k_linear_head.pth` ... `dinov2_vitg14_voc2012_ms_head.pth`):
mmseg's `BNHead` on a frozen backbone. The patch tokens of the backbone's last 1 ("linear") or 4
("ms") blocks, after the final norm, are concatenated along channels, batch-normalised with the
head's running statistics and classified per patch by a 1×1 convolution."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinojax.models.vit import ViT

BATCH_NORM_EPS = 1e-5  # SyncBN's default


def center_padding(images: jax.Array, multiple: int) -> jax.Array:
  """(B, H, W, C) zero-padded to multiples of `multiple`, the extra split evenly (one more pixel
  after than before when odd), as the official segmentation backbones' `CenterPadding`."""
  pads = []
  for size in images.shape[1:3]:
    extra = math.ceil(size / multiple) * multiple - size
    pads.append((extra // 2, extra - extra // 2))
  return jnp.pad(images, ((0, 0), *pads, (0, 0)))


class BNHead(nn.Module):
  """mmseg's `BNHead` at inference: batch norm with the frozen running statistics, then a 1×1
  convolution (`conv_seg`) to class logits. Params {"scale", "bias", "mean", "var", "conv_seg":
  {"kernel" (channels, classes), "bias"}}."""
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    stat = lambda name, init: self.param(name, init, (x.shape[-1],))
    scale, bias = stat("scale", nn.initializers.ones), stat("bias", nn.initializers.zeros)
    mean, var = stat("mean", nn.initializers.zeros), stat("var", nn.initializers.ones)
    x = (x - mean) * jax.lax.rsqrt(var + BATCH_NORM_EPS) * scale + bias
    return nn.Dense(self.num_classes, name="conv_seg", kernel_init=nn.initializers.normal(0.01))(x)


class LinearSegmenter(nn.Module):
  """(B, H, W, 3) normalised images -> (B, h, w, classes) logits on the centre-padded image's patch
  grid. Params {"backbone", "head"} (`BNHead`)."""
  backbone: ViT
  layers: int = 1  # last blocks read: 1 for the "linear" heads, 4 for "ms"
  num_classes: int = 150

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    outputs = self.backbone.get_intermediate_layers(center_padding(images, self.backbone.patch_size),
                                                    self.layers, reshape=True)
    return BNHead(self.num_classes, name="head")(jnp.concatenate(outputs, axis=-1).astype(jnp.float32))
