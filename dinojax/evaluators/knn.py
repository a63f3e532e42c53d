"""Weighted k-NN classification on frozen features (DINO's protocol: cosine similarity, top k
neighbours vote with weight exp(sim / T))."""

import jax
import jax.numpy as jnp
import numpy as np


def knn_predict(train_features: jax.Array, train_labels: jax.Array, test_features: jax.Array,
                num_classes: int, k: int = 20, temperature: float = 0.07) -> jax.Array:
  """Class scores (num_test, num_classes) for L2-normalised features."""
  k = min(k, train_features.shape[0])
  similarity = test_features @ train_features.T
  top_sim, top_idx = jax.lax.top_k(similarity, k)
  votes = jax.nn.one_hot(train_labels[top_idx], num_classes) * jnp.exp(top_sim / temperature)[..., None]
  return votes.sum(axis=1)


def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, num_classes: int, k: int = 20, temperature: float = 0.07,
                 chunk: int = 1024) -> float:
  """Top-1 accuracy (in [0, 1]) of weighted k-NN, test set processed in chunks."""
  train = jnp.asarray(_normalize(train_features))
  labels = jnp.asarray(train_labels)
  predict = jax.jit(knn_predict, static_argnums=(3, 4))
  correct = 0
  for start in range(0, len(test_features), chunk):
    feats = jnp.asarray(_normalize(test_features[start:start + chunk]))
    scores = predict(train, labels, feats, num_classes, k, temperature)
    correct += int((np.asarray(scores.argmax(-1)) == test_labels[start:start + chunk]).sum())
  return correct / max(len(test_features), 1)
