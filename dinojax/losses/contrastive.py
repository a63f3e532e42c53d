"""Image–text contrastive losses over the global batch: CLIP's symmetric InfoNCE (Radford et al., 2021),
used by dino.txt (Jose et al., 2025), and SigLIP's pairwise sigmoid loss (Zhai et al., 2023).

Embeddings are L2-normalised (B, E) rows, pair i being image i and text i. With a `mesh`, each device
holds its slice of the batch and the loss runs under `jax.shard_map`: the other devices' embeddings are
all-gathered, every device scores its own rows against the whole batch (a b × B block instead of the
whole B × B matrix), and the partial sums are added over the batch axes; gradients flow back through
the gather. Without a mesh the same numbers come from one B × B matrix.
"""

import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

LOSSES = ("softmax", "sigmoid")
# CLIP clamps the learned inverse temperature exp(logit_scale) at 100.
MAX_LOGIT_SCALE = math.log(100)
# Initial values: CLIP's temperature 0.07 (also dino.txt's); SigLIP's t' = log 10 and b = -10.
INIT_LOGIT_SCALE = {"softmax": math.log(1 / 0.07), "sigmoid": math.log(10.0)}
INIT_LOGIT_BIAS = -10.0


def clip_logit_scale(logit_scale: jax.Array) -> jax.Array:
  """Clamp applied to the parameter after every update, as CLIP / OpenCLIP / dino.txt do."""
  return jnp.clip(logit_scale, 0.0, MAX_LOGIT_SCALE)


def _softmax_sums(image, text, all_image, all_text, logit_scale, offset):
  """Sum over local pairs of -log p(text_i | image_i) and -log p(image_i | text_i)."""
  scale = jnp.exp(logit_scale)
  rows = jnp.arange(image.shape[0])
  positives = offset + rows
  image_to_text = jax.nn.log_softmax(scale * image @ all_text.T, axis=-1)[rows, positives]
  text_to_image = jax.nn.log_softmax(scale * text @ all_image.T, axis=-1)[rows, positives]
  return -(image_to_text.sum() + text_to_image.sum())


def _sigmoid_sums(image, all_text, logit_scale, logit_bias, offset):
  """Sum over local images and all texts of -log σ(z_ij (t·x_i·y_j + b)), z = 1 on pairs, -1 off."""
  logits = jnp.exp(logit_scale) * image @ all_text.T + logit_bias
  labels = (offset + jnp.arange(image.shape[0]))[:, None] == jnp.arange(all_text.shape[0])
  return -jax.nn.log_sigmoid(jnp.where(labels, logits, -logits)).sum()


def contrastive_loss(image: jax.Array, text: jax.Array, logit_scale: jax.Array,
                     logit_bias: jax.Array | None = None, kind: str = "softmax",
                     mesh: Mesh | None = None, batch_axes: str | tuple[str, ...] = ("data", "fsdp")
                     ) -> jax.Array:
  """The loss of B image–text pairs.

  softmax: (mean_i -log softmax_j(t·x_i·y_j)[i] + mean_i -log softmax_j(t·y_i·x_j)[i]) / 2, t =
    exp(logit_scale) (CLIP's symmetric cross-entropy);
  sigmoid: -(1/B) Σ_ij log σ(z_ij (t·x_i·y_j + b)) with z_ij = +1 iff i = j (SigLIP; needs `logit_bias`).

  With `mesh`, `image` and `text` are sharded on their batch dim over `batch_axes` and the loss is
  computed per shard against the all-gathered batch (see the module docstring).
  """
  if kind not in LOSSES:
    raise ValueError(f"Unknown contrastive loss {kind!r}; choose one of {LOSSES}.")
  if kind == "sigmoid" and logit_bias is None:
    raise ValueError("The sigmoid loss needs a logit_bias.")
  if image.shape != text.shape or image.ndim != 2:
    raise ValueError(f"Expected image and text embeddings of the same (batch, dim) shape, got "
                     f"{image.shape} and {text.shape}.")
  image, text = image.astype(jnp.float32), text.astype(jnp.float32)
  batch = image.shape[0]
  logit_bias = jnp.zeros(()) if logit_bias is None else logit_bias

  def sums(image, text, all_image, all_text, logit_scale, logit_bias, offset):
    if kind == "softmax":
      return _softmax_sums(image, text, all_image, all_text, logit_scale, offset) / 2
    return _sigmoid_sums(image, all_text, logit_scale, logit_bias, offset)

  if mesh is None:
    return sums(image, text, image, text, logit_scale, logit_bias, 0) / batch

  axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
  shards = math.prod(mesh.shape[a] for a in axes)
  if batch % shards:
    raise ValueError(f"Batch {batch} does not split over the {shards} devices of mesh axes {axes}.")

  def per_shard(image, text, logit_scale, logit_bias):
    all_image = jax.lax.all_gather(image, axes, tiled=True)
    all_text = jax.lax.all_gather(text, axes, tiled=True)
    offset = jax.lax.axis_index(axes) * image.shape[0]
    local = sums(image, text, all_image, all_text, logit_scale, logit_bias, offset)
    return jax.lax.psum(local, axes) / batch

  rows = P(axes, None)
  return jax.shard_map(per_shard, mesh=mesh, in_specs=(rows, rows, P(), P()), out_specs=P())(
      image, text, jnp.asarray(logit_scale, jnp.float32), jnp.asarray(logit_bias, jnp.float32))
