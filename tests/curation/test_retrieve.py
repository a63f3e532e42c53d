"""Retrieval-based curation: the k nearest deduplicated pool images of each query (NumPy reference),
the same over several processes' blocks, cluster sampling for small query sets, and a clear error
when queries and pool were embedded with different widths."""

import os
import sys

import numpy as np
import pytest

from dinojax.curation import embed, kmeans, retrieve, store

sys.path.insert(0, os.path.dirname(__file__))
from test_search import clustered, tiny_config  # noqa: E402


def _workdir(path, pool, queries, keep):
  workdir = str(path)
  store.write_embeddings(embed.collection_dir(workdir, "pool"), pool, shard_size=100)
  store.write_embeddings(embed.collection_dir(workdir, "queries"), queries, shard_size=100)
  os.makedirs(os.path.join(workdir, "dedup"))
  store.atomic_save(os.path.join(workdir, "dedup", "keep.npy"), keep)
  return workdir


def _config(mode="knn"):
  config = tiny_config()
  config.search.shards_per_block = 2
  config.retrieve.mode = mode
  return config


@pytest.fixture(scope="module")
def data():
  points = clustered(1030, 16, 12, seed=0)
  keep = np.sort(np.random.default_rng(0).choice(1000, 900, replace=False))
  return points[:1000], points[1000:], keep


def test_knn_retrieval_matches_numpy_on_the_kept_pool(tmp_path, data):
  pool, queries, keep = data
  summary = retrieve.run(_config(), _workdir(tmp_path, pool, queries, keep))
  similarity = queries @ pool[keep].T
  reference = keep[np.argsort(-similarity, axis=1, kind="stable")[:, :4]]
  neighbours = np.load(tmp_path / "retrieve/neighbours.npy")
  np.testing.assert_array_equal(neighbours, reference)
  selected = np.load(tmp_path / "retrieve/selected.npy")
  np.testing.assert_array_equal(selected, np.unique(reference))
  assert summary["selected"] == len(selected) and retrieve.load_selected(str(tmp_path)).tolist() == selected.tolist()
  assert (tmp_path / "retrieve/selected.txt").read_text().split() == [str(i) for i in selected]


def test_two_processes_retrieve_like_one(tmp_path, data):
  pool, queries, keep = data
  one = _workdir(tmp_path / "one", pool, queries, keep)
  two = _workdir(tmp_path / "two", pool, queries, keep)
  retrieve.run(_config(), one)
  assert retrieve.run(_config(), two, process_index=0, process_count=2) is None
  retrieve.run(_config(), two, process_index=1, process_count=2)
  for name in ("neighbours", "selected"):
    np.testing.assert_array_equal(np.load(f"{one}/retrieve/{name}.npy"), np.load(f"{two}/retrieve/{name}.npy"))


def test_cluster_sampling_for_small_query_sets(tmp_path, data):
  pool, queries, keep = data
  config = _config("sample")
  config.retrieve.update(clusters=12, samples_per_query=7)
  workdir = _workdir(tmp_path, pool, queries[:5], keep)
  retrieve.run(config, workdir)
  selected = np.load(tmp_path / "retrieve/selected.npy")
  centroids = np.load(tmp_path / "retrieve/pool_centroids.npy")
  pool_labels = kmeans.assign(pool[keep], centroids)[0]
  query_clusters, per_cluster = np.unique(kmeans.assign(queries[:5], centroids)[0], return_counts=True)
  labels_of = dict(zip(keep, pool_labels))
  assert set(labels_of[i] for i in selected) <= set(query_clusters)
  for c, m in zip(query_clusters, per_cluster):
    got = sum(labels_of[i] == c for i in selected)
    assert got == min(7 * m, int((pool_labels == c).sum()))


def test_mismatched_dimensions_between_queries_and_pool(tmp_path, data):
  pool, _, keep = data
  wrong = clustered(10, 8, 2, seed=1)
  with pytest.raises(ValueError, match="queries have 8, the database 16"):
    retrieve.run(_config(), _workdir(tmp_path, pool, wrong, keep))


def test_missing_dedup_output_names_the_step(tmp_path, data):
  pool, queries, _ = data
  workdir = str(tmp_path)
  store.write_embeddings(embed.collection_dir(workdir, "pool"), pool, shard_size=500)
  store.write_embeddings(embed.collection_dir(workdir, "queries"), queries, shard_size=500)
  with pytest.raises(FileNotFoundError, match="run the `dedup` step first"):
    retrieve.run(_config(), workdir)
