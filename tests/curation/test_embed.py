"""The embedding job: unreadable images go to the rejects file, a killed job resumes without
rewriting finished shards, two processes write the same shards as one, and 8 devices give the same
embeddings as one."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from dinojax.curation import embed, store

sys.path.insert(0, os.path.dirname(__file__))
from test_search import tiny_config  # noqa: E402


def _config(pool, shard_size=16, **embed_overrides):
  config = tiny_config()
  config.data.update(pool=pool, queries="", evaluation="")
  config.embed.update(shard_size=shard_size, batch_size=8, **embed_overrides)
  return config


def _files(directory):
  """name -> (inode, mtime) of every shard file: a rewrite changes both."""
  return {f: (os.stat(os.path.join(directory, f)).st_ino, os.stat(os.path.join(directory, f)).st_mtime_ns)
          for f in sorted(os.listdir(directory)) if f.startswith(("embeddings-", "ids-"))}


def _shards(workdir):
  shards = store.EmbeddingShards(embed.collection_dir(str(workdir), "pool"))
  return [shards.load(s) for s in range(shards.num_shards)]


def test_unreadable_images_are_rejected_not_fatal(tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(5):
    Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(folder / f"ok{i}.png")
  (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  (folder / "empty.png").write_bytes(b"")
  listing = tmp_path / "list.txt"
  listing.write_text("images/ok0.png\nimages/missing.png\n")
  config = _config(f"folder:{folder}", shard_size=4)
  config.data.queries = f"list:{listing}"
  summary = embed.run(config, str(tmp_path / "work"))
  assert summary["pool"] == {"num_images": 7, "embedded": 5, "rejected": 2, "dim": 64, "num_shards": 2}
  rejects = (tmp_path / "work/embeddings/pool/rejects.tsv").read_text().splitlines()
  assert sorted(line.split("\t")[1].rsplit("/", 1)[1] for line in rejects) == ["broken.jpg", "empty.png"]
  ids = np.concatenate([ids for ids, _ in _shards(tmp_path / "work")])
  assert len(ids) == 5 and not set(ids) & {int(line.split("\t")[0]) for line in rejects}
  assert "missing.png" in (tmp_path / "work/embeddings/queries/rejects.tsv").read_text()
  assert summary["queries"]["embedded"] == 1


def test_killed_job_resumes_without_rewriting_finished_shards(tmp_path, monkeypatch):
  config = _config("digits:train[0:80]")  # 5 shards
  written = []
  real_write = embed.write_shard

  def dies_after_two(*args):
    if len(written) == 2:
      raise KeyboardInterrupt("killed")
    real_write(*args)
    written.append(args[1])

  monkeypatch.setattr(embed, "write_shard", dies_after_two)
  with pytest.raises(KeyboardInterrupt):
    embed.run(config, str(tmp_path / "work"))
  directory = embed.collection_dir(str(tmp_path / "work"), "pool")
  before = _files(directory)
  assert sorted(before) == ["embeddings-00000.npy", "embeddings-00001.npy", "ids-00000.npy", "ids-00001.npy"]
  written.clear()
  monkeypatch.setattr(embed, "write_shard", lambda *a: (written.append(a[1]), real_write(*a)))
  assert embed.run(config, str(tmp_path / "work"))["pool"]["embedded"] == 80
  assert written == [2, 3, 4]  # restarted at the first missing shard
  after = _files(directory)
  assert all(after[f] == before[f] for f in before)  # finished shards untouched
  # A resumed job's shards equal an uninterrupted one's.
  monkeypatch.setattr(embed, "write_shard", real_write)
  embed.run(config, str(tmp_path / "fresh"))
  for (ids_a, a), (ids_b, b) in zip(_shards(tmp_path / "work"), _shards(tmp_path / "fresh")):
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_two_processes_write_the_same_shards_as_one(tmp_path):
  config = _config("digits:train[0:72]")
  result = embed.run(config, str(tmp_path / "two"), process_index=1, process_count=2)
  assert result["pool"] is None  # process 0's shards are still missing
  assert embed.run(config, str(tmp_path / "two"), process_index=0, process_count=2)["pool"]["embedded"] == 72
  embed.run(config, str(tmp_path / "one"))
  two, one = _shards(tmp_path / "two"), _shards(tmp_path / "one")
  assert len(two) == len(one) == 5
  for (ids_a, a), (ids_b, b) in zip(two, one):
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(one[0][1], axis=1), 1, rtol=1e-5)


def test_eight_devices_embed_like_one():
  images = np.random.default_rng(0).normal(size=(12, 32, 32, 3)).astype(np.float32)
  eight = embed.Embedder(_config("digits:train"))(images)
  one = embed.Embedder(_config("digits:train", num_devices=1))(images)
  assert eight.shape == (12, 64)
  np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-5)


def test_collection_specs():
  assert len(embed.make_collection("digits:heldout[0:180]")) == 180
  assert len(embed.make_collection("digits:heldout[180:]")) == 360 - 180
  with pytest.raises(ValueError, match="Unknown image collection 'imagenet'"):
    embed.make_collection("imagenet")
  with pytest.raises(ValueError, match="is empty"):
    embed.make_collection("digits:train[5:5]")
  config = _config("digits:train[0:32]")
  with pytest.raises(ValueError, match="does not split over 8 devices"):
    config.embed.batch_size = 12
    embed.Embedder(config)


def test_changed_settings_in_an_existing_workdir_are_refused(tmp_path):
  embed.run(_config("digits:train[0:16]"), str(tmp_path))
  with pytest.raises(ValueError, match="holds embeddings made with other settings"):
    embed.run(_config("digits:train[0:32]"), str(tmp_path))
