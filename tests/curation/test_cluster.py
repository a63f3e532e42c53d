"""The `cluster` step with split level-1 clusters (`cluster.n_splits = [s, 1]`): two processes sharing
the workdir (threads here) each finish in one call; the merged clusters are numbered as the
official concatenation (level-1 cluster by cluster, each one's parts in k-means order, empty parts
dropped), each a k-means split of one level-1 cluster; the upper level runs on them; a run killed
mid split resumes at its first unsaved part to the same hierarchy; a process whose partner never
comes stops with an error naming it. And as two real processes joined into one JAX job by
`python -m dinojax.curate --coordinator`: the same hierarchy."""

import os
import shutil
import sys
import threading

import numpy as np
import pytest

import jobs
from dinojax.curation import cluster, embed, kmeans, store

sys.path.insert(0, os.path.dirname(__file__))
from test_search import clustered, tiny_config  # noqa: E402

N, SPLITS = 240, 4
# Parts of 2 level-1 clusters: 3 parts of the 5 clusters, shared by both processes.
CLUSTER = dict(n_clusters=[5, 3], n_splits=[SPLITS, 1], resampling_steps=[1, 2], sample_sizes=[1, 2], iterations=4,
               split_part_clusters=2)


def make_workdir(path, vectors):
  workdir = str(path)
  store.write_embeddings(embed.collection_dir(workdir, "pool"), vectors, shard_size=80)
  os.makedirs(os.path.join(workdir, "dedup"))
  store.atomic_save(os.path.join(workdir, "dedup/keep.npy"), np.arange(len(vectors)))
  return workdir


def split_config():
  config = tiny_config()
  config.data.pool = "digits:train"  # only names the keys written beside the ids
  config.cluster.update(**CLUSTER)
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


def test_killed_mid_split_resumes_at_its_first_unsaved_part(two_processes, tmp_path, monkeypatch):
  vectors, config, reference, _ = two_processes
  workdir = make_workdir(tmp_path, vectors)
  split, calls = kmeans.split, []

  def counted(*args):
    calls.append(args[2])  # the seed: config.seed + 1 + the level-1 cluster
    return split(*args)

  def killed_at_the_third_cluster(*args):
    if len(calls) == 2:
      raise KeyboardInterrupt
    return counted(*args)

  monkeypatch.setattr(kmeans, "split", killed_at_the_third_cluster)
  with pytest.raises(KeyboardInterrupt):
    cluster.run(config, workdir)
  assert sorted(f for f in os.listdir(os.path.join(workdir, "cluster/parts")) if f.startswith("split")) == [
      "split-000000000-000000002.npz"]  # clusters 0 and 1, saved before the kill in cluster 2
  monkeypatch.setattr(kmeans, "split", counted)
  calls.clear()
  assert cluster.run(config, workdir)["points"] == N
  assert calls == [config.seed + 1 + c for c in (2, 3, 4)]  # only the unsaved parts are split again
  resumed, one = (np.load(os.path.join(w, "cluster/hierarchy.npz")) for w in (workdir, reference))
  assert sorted(resumed.files) == sorted(one.files)
  for key in one.files:  # one process resumed = two processes
    np.testing.assert_array_equal(resumed[key], one[key], err_msg=key)


def test_a_partner_that_never_comes_is_named_after_the_timeout(two_processes, tmp_path, monkeypatch):
  vectors, _, reference, _ = two_processes
  monkeypatch.setattr(cluster, "POLL_SECONDS", 0.01)
  config = split_config()
  config.cluster.barrier_timeout = 0.05
  alone = make_workdir(tmp_path / "one", vectors)
  with pytest.raises(TimeoutError, match=r"level-1 centroids of process 0: 1 file\(s\) missing "
                                         r"\(.*level1_centroids.npy\), written by process\(es\) \[0\]"):
    cluster.run(config, alone, process_index=1, process_count=2)
  # Process 0 with the centroids already fitted: assigns shards 0 and 2, then waits for shard 1's.
  shutil.copy(os.path.join(reference, "cluster/level1_centroids.npy"), os.path.join(alone, "cluster"))
  with pytest.raises(TimeoutError, match=r"assignments of every process: 1 file\(s\) missing "
                                         r"\(.*assign-00001.npz\), written by process\(es\) \[1\]"):
    cluster.run(config, alone, process_index=0, process_count=2)


@pytest.mark.slow  # two subprocesses
def test_two_jax_processes_equal_one_process(two_processes, tmp_path):
  """Level 1 as one JAX job over two processes (2 devices each), holding shard 0 and shards 1-2 of
  the pool (80 and 160 rows, padded unevenly), the same rows in the same order as one process; then
  the split parts shared between them through the workdir. Gloo's sums add in another order than
  one process's, so centroids agree to rounding."""
  vectors, config, reference, _ = two_processes
  workdir = make_workdir(tmp_path / "two", vectors)
  config_file = tmp_path / "config.py"
  config_file.write_text(f"""from dinojax import config_args

def get_config():
  c = config_args.load_config({str(jobs.REPO / "configs/curate_tiny.py")!r})
  c.cluster.update(barrier_timeout=300.0, **{CLUSTER!r})
  return c
""")
  coordinator = f"--coordinator=127.0.0.1:{jobs.free_port()}"
  commands = [[sys.executable, "-m", "dinojax.curate", "cluster", "--config", str(config_file),
               "--workdir", workdir, coordinator, f"--process_index={i}", "--process_count=2"] for i in range(2)]
  jobs.wait_processes(jobs.start_processes(commands, workdir, devices=2), workdir, timeout=600)
  one, two = (np.load(os.path.join(w, "cluster/hierarchy.npz")) for w in (reference, workdir))
  assert sorted(two.files) == sorted(one.files)
  for key in ("ids", "labels", "parents_2"):
    np.testing.assert_array_equal(two[key], one[key], err_msg=key)
  for key in ("centroids_1", "centroids_2", "sqdist"):
    np.testing.assert_allclose(two[key], one[key], atol=1e-5, err_msg=key)
  level1 = [np.load(os.path.join(w, "cluster/level1_centroids.npy")) for w in (workdir, reference)]
  np.testing.assert_allclose(*level1, atol=1e-5)
