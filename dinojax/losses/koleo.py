"""KoLeo regulariser (Sablayrolles et al., 2019; DINOv2 §4): spreads features uniformly by
penalising -log of each sample's distance to its nearest neighbour."""

import jax
import jax.numpy as jnp

from dinojax.ops.numerics import l2_normalize


def _log_nearest_distance(x: jax.Array, eps: float) -> jax.Array:
  """-log(‖x_i - x_nn(i)‖ + eps) for each row of unit-norm (n, D) `x`, neighbours among its rows."""
  similarity = x @ x.T
  similarity = jnp.fill_diagonal(similarity, -2.0, inplace=False)  # never your own neighbour
  nearest = x[jnp.argmax(similarity, axis=-1)]
  # torch.nn.PairwiseDistance adds eps to the difference before the norm.
  return -jnp.log(jnp.linalg.norm(x - nearest + eps, axis=-1) + eps)


def koleo_loss(features: jax.Array, group_size: int | None = None, eps: float = 1e-8) -> jax.Array:
  """Mean over samples of -log(‖x_i - x_nn(i)‖ + eps) on L2-normalised features (B, D).

  Nearest neighbours are searched within groups of `group_size` consecutive rows (None: all B), as
  the official code searches one GPU's batch: the distances, and so the loss, depend on the group
  size, and groups of the official per-GPU batch give the official regulariser on any device count.
  Every group weighs the same in the mean (the official average over GPUs).
  """
  group_size = group_size or features.shape[0]
  if features.shape[0] % group_size:
    raise ValueError(f"KoLeo groups of {group_size} do not divide the batch of {features.shape[0]}.")
  x = l2_normalize(features.astype(jnp.float32), eps)
  groups = x.reshape(-1, group_size, x.shape[-1])
  return jax.vmap(lambda g: _log_nearest_distance(g, eps))(groups).mean()
