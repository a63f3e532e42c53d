"""Linear classifiers on frozen DINOv2 features: the input the paper's linear evaluation trains on,
and the released ImageNet classifiers (`torch.hub.load("facebookresearch/dinov2",
"dinov2_vitl14_reg_lc")`: a backbone and a linear head on the class tokens of its last 1 or 4 blocks
followed by the mean patch token of the last)."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinojax.models.vit import ViT


def linear_input(outputs: Sequence, blocks: int, avgpool: bool) -> jax.Array:
  """fp32 (B, dim): the class tokens of the last `blocks` of `outputs` (the (patch tokens, class
  token) pairs of `ViT.get_intermediate_layers(..., return_class_token=True)`), then, with
  `avgpool`, the mean of the last one's patch tokens (the official `create_linear_input`)."""
  last = outputs[-blocks:]
  parts = [cls for _, cls in last]
  if avgpool:
    parts.append(last[-1][0].mean(axis=1))
  return jnp.concatenate(parts, axis=-1).astype(jnp.float32)


class LinearClassifier(nn.Module):
  """Logits of a linear `head` (params {"backbone", "head": {"kernel" (dim, classes), "bias"}}) on
  `linear_input` of the backbone's last `blocks` blocks; the released heads use `avgpool`."""
  backbone: ViT
  blocks: int = 4
  avgpool: bool = True
  num_classes: int = 1000

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    outputs = self.backbone.get_intermediate_layers(images, self.blocks, return_class_token=True)
    return nn.Dense(self.num_classes, name="head")(linear_input(outputs, self.blocks, self.avgpool))
