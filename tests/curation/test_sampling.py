"""Hierarchical k-means and balanced sampling (Vo et al., 2024): exact water-filling quotas against a
brute-force reference, and on a long-tailed mixture the curated set's share of each true mode
within the configured tolerance of the balanced allocation."""

import os
import sys

import numpy as np
import pytest

from dinojax.curation import cluster, embed, kmeans, sampling, store

sys.path.insert(0, os.path.dirname(__file__))
from test_search import normalized, tiny_config  # noqa: E402

# Long-tailed modes, as the toy example of the official repository (sizes differ by 100×).
MODE_SIZES = (8000, 200, 1000, 500, 3000)
TARGET = 1500
TOLERANCE = 0.15  # each mode's share of the sample vs the balanced quota, relative


def brute_force_cut(sizes, target):
  return max(t for t in range(max(sizes) + 1) if np.minimum(sizes, t).sum() <= target)


@pytest.mark.parametrize("seed", range(5))
def test_balanced_counts_are_water_filling(seed):
  rng = np.random.default_rng(seed)
  sizes = rng.integers(0, 50, 12) ** 2
  target = int(rng.integers(1, sizes.sum()))
  counts = sampling.balanced_counts(sizes, target, rng)
  t = brute_force_cut(sizes, target)
  assert counts.sum() == target and (counts <= sizes).all()
  assert all(c == min(s, t) or c == t + 1 for c, s in zip(counts, sizes))
  np.testing.assert_array_equal(sampling.balanced_counts(sizes, sizes.sum() + 5, rng), sizes)


def test_hierarchical_sampling_splits_quotas_down_the_tree():
  members = [np.arange(10 * c, 10 * c + n) for c, n in enumerate([10, 1, 10, 10])]
  parents = [np.array([0, 0, 1, 1])]  # two top clusters of 11 and 20 points
  rng = np.random.default_rng(0)
  picked = sampling.hierarchical_sampling(members, parents, 12, "c", rng)
  # Top: 6 + 6; first cluster: 5 from its big child + its single point; second: 3 + 3, closest first.
  np.testing.assert_array_equal(picked, [0, 1, 2, 3, 4, 10, 20, 21, 22, 30, 31, 32])
  assert len(sampling.hierarchical_sampling(members, [], 12, "r", rng)) == 12
  with pytest.raises(ValueError, match="Unknown sampling strategy"):
    sampling.hierarchical_sampling(members, parents, 12, "closest", rng)


def long_tailed(seed=0, d=32):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(len(MODE_SIZES), d))
  modes = np.repeat(np.arange(len(MODE_SIZES)), MODE_SIZES)
  x = centres[modes] + 0.25 * rng.normal(size=(len(modes), d))
  order = rng.permutation(len(modes))
  return normalized(x[order]), modes[order]


def test_cluster_and_sample_balance_a_long_tailed_pool(tmp_path):
  vectors, modes = long_tailed()
  workdir = str(tmp_path)
  store.write_embeddings(embed.collection_dir(workdir, "pool"), vectors, shard_size=2000)
  os.makedirs(tmp_path / "dedup")
  store.atomic_save(str(tmp_path / "dedup/keep.npy"), np.arange(len(vectors)))
  config = tiny_config()
  config.data.pool = "digits:train"  # only names the keys written beside the ids
  config.cluster.update(n_clusters=[100, 20, 5], n_splits=[1, 1, 1], resampling_steps=[1, 10, 10],
                        sample_sizes=[1, 3, 2])
  config.sample.update(target_size=TARGET, strategy="r")
  # Two processes share the assignment of the shards; the second to finish builds the hierarchy.
  assert cluster.run(config, workdir, process_index=0, process_count=2) is None
  summary = cluster.run(config, workdir, process_index=1, process_count=2)
  assert summary["points"] == len(vectors) and summary["levels"][-1]["clusters"] == 5
  config.sample.target_size = -1
  with pytest.raises(ValueError, match="target must be >= 0"):
    sampling.run(config, workdir)
  config.sample.target_size = TARGET
  result = sampling.run(config, workdir)
  selected = np.load(tmp_path / "sample/selected.npy")
  assert result["selected"] == TARGET == len(np.unique(selected))
  quota = sampling.balanced_counts(np.array(MODE_SIZES), TARGET, np.random.default_rng(0))
  share = np.bincount(modes[selected], minlength=len(MODE_SIZES))
  assert np.all(np.abs(share - quota) <= TOLERANCE * quota), (share, quota)
  uniform = np.bincount(modes[np.random.default_rng(0).choice(len(vectors), TARGET, replace=False)])
  assert share[1] > 3 * uniform[1]  # the rare mode gains against plain random sampling


def store_of(x):
  """An in-memory stand-in for `store.EmbeddingShards` with one shard."""
  class Shards:
    num_shards, dim = 1, x.shape[1]

    def load(self, shard, keep):
      return np.arange(len(x)), x
  return Shards()


def test_assignment_matches_brute_force_and_resampling_keeps_k_centroids():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(500, 6)).astype(np.float32)
  c = rng.normal(size=(7, 6)).astype(np.float32)
  labels, sqdist = kmeans.assign(x, c)
  d = ((x[:, None] - c[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(labels, d.argmin(1))
  np.testing.assert_allclose(sqdist, d.min(1), rtol=1e-4, atol=1e-4)
  centroids, labels = kmeans.kmeans_with_resampling(x, 7, resampling_steps=3, sample_size=10, seed=0)
  assert centroids.shape == (7, 6) and labels.shape == (500,)
  with pytest.raises(ValueError, match="must decrease"):
    cfg = tiny_config().cluster
    cfg.n_clusters = [10, 20, 5]
    cluster.check_levels(cfg)


def entropy(counts):
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


@pytest.mark.slow
def test_official_level1_balances_at_least_as_well_as_minibatch():
  """On a long-tailed pool of 40 concepts (500× between the commonest and the rarest), the curated
  set's concept histogram with the official level 1 is at least as balanced as with the former
  mini-batch level 1; a split cluster's parts cover it."""
  rng = np.random.default_rng(1)
  sizes = np.round(2000 * 500.0 ** -np.linspace(0, 1, 40)).astype(int)
  concepts = np.repeat(np.arange(40), sizes)
  x = normalized(rng.normal(size=(40, 16))[concepts] + 0.3 * rng.normal(size=(len(concepts), 16)))

  def curated_entropy(base):
    labels, sqdist = kmeans.assign(x, base)
    levels = kmeans.hierarchical_kmeans(base, [30, 10], [10, 10], [3, 2], seed=0, iterations=20)
    order = np.lexsort((sqdist, labels))
    members = np.split(order, np.searchsorted(labels[order], np.arange(1, len(base))))
    picked = sampling.hierarchical_sampling(members, [lv["parents"] for lv in levels], 1000, "r",
                                            np.random.default_rng(0))
    return entropy(np.bincount(concepts[picked], minlength=40))

  minibatch = kmeans.fit_streaming(kmeans.minibatches(store_of(x), None, 1024, 2, 0), 150, 0)
  official = kmeans.kmeans(x, 150, seed=0, iterations=20)
  assert curated_entropy(official) >= curated_entropy(minibatch) - 1e-9
  centroids, labels = kmeans.split(x[:300], 3, seed=0, iterations=10)
  assert len(centroids) <= 3 and set(labels) == set(range(len(centroids)))
  np.testing.assert_array_equal(kmeans.split(x[:3], 3, seed=0, iterations=10)[0], x[:3])
  assert curated_entropy(minibatch) > entropy(np.bincount(concepts[rng.choice(len(x), 1000, replace=False)]))
