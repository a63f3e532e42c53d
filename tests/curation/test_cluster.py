"""The `cluster` step with split level-1 clusters (`cluster.n_splits = [s, 1]`): two processes sharing
the workdir (threads here) each finish in one call; the merged clusters are numbered as the
official concatenation (level-1 cluster by cluster, each one's parts in k-means order, empty parts
dropped), each a k-means split of one level-1 cluster; the upper level runs on them; and a run
killed mid split resumes to the same hierarchy."""

import os
import sys
import threading

import numpy as np
import pytest

from dinojax.curation import cluster, embed, kmeans, store

sys.path.insert(0, os.path.dirname(__file__))
from test_search import clustered, tiny_config  # noqa: E402

N, SPLITS = 240, 4


def make_workdir(path, vectors):
  workdir = str(path)
  store.write_embeddings(embed.collection_dir(workdir, "pool"), vectors, shard_size=80)
  os.makedirs(os.path.join(workdir, "dedup"))
  store.atomic_save(os.path.join(workdir, "dedup/keep.npy"), np.arange(len(vectors)))
  return workdir


def split_config():
  config = tiny_config()
  config.data.pool = "digits:train"  # only names the keys written beside the ids
  config.cluster.update(n_clusters=[5, 3], n_splits=[SPLITS, 1], resampling_steps=[1, 2], sample_sizes=[1, 2],
                        iterations=4)
  return config


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  """Process 1 starts first and waits for process 0's level-1 centroids; both return the summary."""
  vectors = clustered(N, 8, 6, seed=0)
  workdir = make_workdir(tmp_path_factory.mktemp("two"), vectors)
  config = split_config()
  summaries = {}
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(cluster, "POLL_SECONDS", 0.02)
    second = threading.Thread(target=lambda: summaries.update({1: cluster.run(config, workdir, 1, 2)}),
                              daemon=True)
    second.start()
    summaries[0] = cluster.run(config, workdir, process_index=0, process_count=2)
    second.join(timeout=120)
  assert not second.is_alive(), "process 1 never finished"
  return vectors, config, workdir, summaries


def test_split_parts_merge_in_the_official_order(two_processes):
  vectors, config, workdir, summaries = two_processes
  assert summaries[0] == summaries[1] and summaries[0]["points"] == N
  hierarchy = np.load(os.path.join(workdir, "cluster/hierarchy.npz"))
  ids, labels, fine = hierarchy["ids"], hierarchy["labels"], hierarchy["centroids_1"]
  np.testing.assert_array_equal(ids, np.arange(N))  # every point once
  np.testing.assert_array_equal(np.unique(labels), np.arange(len(fine)))  # contiguous, none empty
  assert 5 < len(fine) <= 5 * SPLITS

  # The official concatenation, restated: level-1 cluster c's points (ascending ids) split by its own
  # seed, its parts numbered after those of clusters 0..c-1.
  coarse_labels, _ = kmeans.assign(vectors, np.load(os.path.join(workdir, "cluster/level1_centroids.npy")))
  expected_centroids, expected_labels = [], np.empty(N, np.int64)
  for c in range(5):
    members = np.flatnonzero(coarse_labels == c)
    centroids, sub = kmeans.split(vectors[members], SPLITS, config.seed + 1 + c, config.cluster.iterations)
    expected_labels[members] = sum(map(len, expected_centroids)) + sub
    expected_centroids.append(centroids)
  np.testing.assert_array_equal(fine, np.concatenate(expected_centroids))
  np.testing.assert_array_equal(labels, expected_labels)
  for part in range(len(fine)):  # each part inside one level-1 cluster
    assert len(np.unique(coarse_labels[labels == part])) == 1

  upper = kmeans.hierarchical_kmeans(fine, [3], [2], [2], config.seed, config.cluster.iterations)
  np.testing.assert_array_equal(hierarchy["parents_2"], upper[0]["parents"])
  np.testing.assert_array_equal(hierarchy["centroids_2"], upper[0]["centroids"])


def test_killed_mid_split_resumes_to_the_same_hierarchy(two_processes, tmp_path, monkeypatch):
  vectors, config, reference, _ = two_processes
  workdir = make_workdir(tmp_path, vectors)
  split, calls = kmeans.split, []

  def killed_at_the_third_cluster(*args):
    calls.append(args)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return split(*args)

  monkeypatch.setattr(kmeans, "split", killed_at_the_third_cluster)
  with pytest.raises(KeyboardInterrupt):
    cluster.run(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "cluster/hierarchy.npz"))
  monkeypatch.undo()
  assert cluster.run(config, workdir)["points"] == N
  resumed, one = (np.load(os.path.join(w, "cluster/hierarchy.npz")) for w in (workdir, reference))
  assert sorted(resumed.files) == sorted(one.files)
  for key in one.files:  # one process resumed = two processes
    np.testing.assert_array_equal(resumed[key], one[key], err_msg=key)
