"""DINOv2's self-distillation losses (Oquab et al., 2023, §4) as pure functions.

Batch-wide reductions (the softmax centre, Sinkhorn-Knopp's row and column sums) take an optional
`axis_name`: called inside `jax.shard_map` over the batch axes they `psum` across devices, so the
result does not depend on how the global batch is split. Under plain `jax.jit` leave it None and XLA
inserts the same collectives.
"""

from typing import Sequence

import jax
import jax.numpy as jnp


def _psum(x: jax.Array, axis_name: str | Sequence[str] | None) -> jax.Array:
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def cross_entropy(teacher_probs: jax.Array, student_logits: jax.Array, student_temp: float) -> jax.Array:
  """-Σ_k p_t(k) log softmax(s / τ_s)(k), per row."""
  log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
  return -jnp.sum(teacher_probs * log_probs, axis=-1)


def dino_loss(student_logits: Sequence[jax.Array], teacher_probs: Sequence[jax.Array],
              student_temp: float = 0.1) -> jax.Array:
  """DINO's image-level loss: cross-entropy summed over every (student crop, teacher crop) pair,
  each averaged over the batch, as the official `DINOLoss`. Callers pair global crops with the
  *other* view's teacher output and normalise by the number of terms."""
  total = 0.0
  for s in student_logits:
    for t in teacher_probs:
      total = total + cross_entropy(t, s, student_temp).mean()
  return total


def masked_patch_weights(masks: jax.Array) -> jax.Array:
  """iBOT's per-patch weights: 1 / (masked patches in the same image) on masked patches, else 0."""
  masks = masks.astype(jnp.float32)
  return masks / jnp.maximum(masks.sum(-1, keepdims=True), 1.0)


def ibot_loss(student_logits: jax.Array, teacher_probs: jax.Array, weights: jax.Array,
              num_images: int, student_temp: float = 0.1) -> jax.Array:
  """iBOT's masked-patch loss (§4): per-patch cross-entropy weighted by `masked_patch_weights`,
  summed, divided by the number of images (so each image counts once, whatever its mask size).

  Patches may be gathered (M, K) or dense (B, N, K), with `weights` shaped like the patch axes.
  """
  per_patch = cross_entropy(teacher_probs, student_logits, student_temp)
  return jnp.sum(per_patch * weights) / num_images


def softmax_center(teacher_logits: jax.Array, center: jax.Array, teacher_temp: float) -> jax.Array:
  """Teacher probabilities with DINO's centering: softmax((t - c) / τ_t)."""
  return jax.nn.softmax((teacher_logits.astype(jnp.float32) - center) / teacher_temp, axis=-1)


def update_center(center: jax.Array, teacher_logits: jax.Array, momentum: float = 0.9,
                  valid: jax.Array | None = None, group: jax.Array | None = None, num_groups: int = 1,
                  axis_name: str | Sequence[str] | None = None) -> jax.Array:
  """EMA of the teacher's mean logits (B, K), as the official `reduce_center_update`: the mean of
  the `valid` rows within each of `num_groups` groups (`group`: each row's, in [0, num_groups); one
  GPU's batch in the original), averaged over the groups. Without groups, the mean over all valid
  rows. A group without valid rows is left out (the official mean of nothing would be NaN)."""
  logits = teacher_logits.astype(jnp.float32)
  valid = jnp.ones(logits.shape[0], bool) if valid is None else valid
  group = jnp.zeros(logits.shape[0], jnp.int32) if group is None else group
  counts = _psum(jax.ops.segment_sum(valid.astype(jnp.float32), group, num_groups), axis_name)
  groups_with_rows = jnp.maximum(jnp.sum(counts > 0), 1)
  # Each row's share of the average of group means: 1 / (its group's rows · the groups).
  weights = jnp.where(valid, 1.0 / (jnp.maximum(counts[group], 1.0) * groups_with_rows), 0.0)
  mean = _psum(jnp.sum(weights[:, None] * logits, axis=0, keepdims=True), axis_name)
  return center * momentum + mean * (1 - momentum)


def sinkhorn_knopp(teacher_logits: jax.Array, teacher_temp: float, n_iterations: int = 3,
                   valid: jax.Array | None = None,
                   axis_name: str | Sequence[str] | None = None) -> jax.Array:
  """Teacher probabilities by Sinkhorn-Knopp centering (SwAV; DINOv2 §4): `n_iterations` of
  alternately giving every prototype equal total mass and every sample a unit distribution.

  teacher_logits: (B, K). `valid` (B,) marks real rows (padded iBOT patches are False and get zero
  mass). Returns (B, K) rows summing to 1.
  """
  logits = teacher_logits.astype(jnp.float32) / teacher_temp
  valid = jnp.ones(logits.shape[0], bool) if valid is None else valid
  # Subtracting the global max keeps exp finite; the normalisations cancel it exactly.
  shift = jnp.max(jnp.where(valid[:, None], logits, -jnp.inf))
  shift = shift if axis_name is None else jax.lax.pmax(shift, axis_name)
  q = jnp.where(valid[:, None], jnp.exp(logits - shift), 0.0)
  num_samples = _psum(valid.sum().astype(jnp.float32), axis_name)
  num_prototypes = q.shape[1]
  q = q / _psum(q.sum(), axis_name)
  for _ in range(n_iterations):
    q = q / _psum(q.sum(0, keepdims=True), axis_name) / num_prototypes
    q = q / jnp.maximum(q.sum(1, keepdims=True), 1e-30) / num_samples
  return q * num_samples
