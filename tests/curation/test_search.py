"""Exact search against NumPy; ScaNN's recall against exact search on a clustered 100k × 384 set;
block-wise results merge to the global top-k; dimension mismatches are clear errors."""

import pathlib

import numpy as np
import pytest

from dinojax import config_args
from dinojax.curation import search

REPO = pathlib.Path(__file__).resolve().parents[2]


def tiny_config():
  return config_args.load_config(REPO / "configs/curate_tiny.py")


def normalized(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n, d, clusters, seed, spread=0.5):
  """Points around random centres on the sphere: the structure of real embedding pools."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(clusters, d)).astype(np.float32)
  x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, d)).astype(np.float32)
  return normalized(x)


def test_exact_knn_matches_numpy_across_blocks_and_padding():
  x = clustered(3000, 24, 30, seed=0)
  q = clustered(130, 24, 30, seed=1)
  scores, indices = search.exact_knn(q, x, 7, query_block=64, database_block=500)
  reference = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :7]
  np.testing.assert_array_equal(indices, reference)
  np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, reference, 1), rtol=1e-5, atol=1e-6)
  few_scores, few = search.exact_knn(q, x[:3], 5)  # fewer points than k: padded
  assert (few[:, 3:] == -1).all() and np.isneginf(few_scores[:, 3:]).all()
  assert sorted(few[0, :3]) == [0, 1, 2]


def test_merged_block_results_equal_one_search():
  x = clustered(2000, 16, 20, seed=2)
  q = clustered(50, 16, 20, seed=3)
  parts = []
  for start in range(0, 2000, 300):  # uneven blocks, as per-process pool blocks
    s, i = search.exact_knn(q, x[start:start + 300], 10)
    parts.append((s, np.where(i >= 0, i + start, -1)))
  merged_scores, merged = search.merge_topk(parts[::-1], 10)
  scores, indices = search.exact_knn(q, x, 10)
  np.testing.assert_array_equal(merged, indices)
  np.testing.assert_allclose(merged_scores, scores, rtol=1e-6)


@pytest.mark.slow
def test_scann_recall_at_10_on_100k_by_384():
  """ScaNN (tree + AH + re-ranking, the configs' settings) finds >= 95 % of the exact top 10."""
  points = clustered(101_000, 384, 1000, seed=4)
  x, q = points[:100_000], points[100_000:]  # queries from the same distribution, held out
  config = tiny_config().search
  config.method = "scann"
  config.training_sample_size = 20_000  # train the tree and codebooks on a subsample: test time
  _, exact = search.exact_knn(q, x, 10)
  _, approx = search.Index(x, 10, config).search(q)
  recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
  assert recall >= 0.95, recall


def test_index_auto_uses_exact_search_below_the_threshold():
  x = clustered(500, 8, 5, seed=6)
  config = tiny_config().search
  assert search.Index(x, 4, config).searcher is None
  config.method = "fast"
  with pytest.raises(ValueError, match="Unknown search method 'fast'"):
    search.Index(x, 4, config)


def test_mismatched_dimensions_are_a_clear_error():
  with pytest.raises(ValueError, match="queries have 16, the database 32"):
    search.knn(np.zeros((3, 16), np.float32), np.zeros((10, 32), np.float32), 2, tiny_config().search)
