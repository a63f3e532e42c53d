"""KoLeo regulariser (Sablayrolles et al., 2019; DINOv2 §4): spreads features uniformly by
penalising -log of each sample's distance to its nearest neighbour."""

from typing import Sequence

import jax
import jax.numpy as jnp

from dinojax.ops.numerics import l2_normalize


def koleo_loss(features: jax.Array, eps: float = 1e-8,
               axis_name: str | Sequence[str] | None = None) -> jax.Array:
  """Mean over samples of -log(‖x_i - x_nn(i)‖ + eps) on L2-normalised features (B, D).

  Nearest neighbours are searched over the whole global batch: inside `shard_map` pass the batch
  `axis_name` and the other devices' features are all-gathered (the official code searches each
  GPU's local batch only, which makes the loss depend on the device count).
  """
  x = features.astype(jnp.float32)
  x = l2_normalize(x, eps)
  others, offset = x, 0
  if axis_name is not None:
    others = jax.lax.all_gather(x, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * x.shape[0]
  similarity = x @ others.T
  own = offset + jnp.arange(x.shape[0])
  similarity = similarity.at[jnp.arange(x.shape[0]), own].set(-2.0)  # never your own neighbour
  nearest = others[jnp.argmax(similarity, axis=-1)]
  # torch.nn.PairwiseDistance adds eps to the difference before the norm.
  distances = jnp.linalg.norm(x - nearest + eps, axis=-1)
  loss = -jnp.log(distances + eps)
  if axis_name is None:
    return loss.mean()
  return jax.lax.psum(loss.sum(), axis_name) / jax.lax.psum(loss.shape[0], axis_name)
