"""Semantic segmentation metrics: a confusion matrix accumulated in JAX, and mIoU from it (the mmseg
convention the open-vocabulary protocol reports: classes absent from both prediction and ground truth
are left out of the mean; label 255 is ignored)."""

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = 255


@jax.jit(static_argnames=("num_classes", "ignore_index"))
def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """(num_classes, num_classes) counts, rows = ground truth, columns = prediction; pixels labelled
  `ignore_index` (or outside [0, num_classes)) do not count."""
  labels, predictions = labels.reshape(-1), predictions.reshape(-1)
  valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
  index = jnp.where(valid, labels * num_classes + jnp.clip(predictions, 0, num_classes - 1), 0)
  counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index].add(valid.astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
  """TP / (TP + FP + FN) per class; NaN where the class appears in neither."""
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
  return float(np.nanmean(iou_per_class(confusion)))
