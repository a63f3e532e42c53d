"""Deduplication finds planted near-duplicates (augmented copies of real photographs) and keeps
exactly one image of each; images near an evaluation image are dropped; the result is the same when
the work is split over processes.

No trained backbone can be downloaded here, and a randomly initialised ViT maps all images to almost
the same direction, so these tests embed images with a fixed descriptor (blurred 16×16 grey
thumbnail, centred and L2-normalised) for which copies are near-duplicates and distinct images are
not. The dedup logic only sees embeddings, as it would from a real backbone.
"""

import io
import os
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFilter

from dinojax.curation import dedup, embed, store

sys.path.insert(0, os.path.dirname(__file__))
from test_search import tiny_config  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera", "coins", "moon",
          "page", "horse", "retina", "hubble_deep_field")


def photo_tiles() -> list[np.ndarray]:
  """3×3 tiles of scikit-image's sample photographs (tiles with some texture): ~100 distinct images."""
  tiles = []
  for name in PHOTOS:
    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype != np.uint8:
      image = (255 * (image / image.max())).astype(np.uint8)
    image = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]
    t = min(image.shape[:2]) // 3
    tiles += [image[i * t:(i + 1) * t, j * t:(j + 1) * t] for i in range(3) for j in range(3)]
  return [t for t in tiles if t.std() > 20]


def near_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A slight crop, a 90 % resize and JPEG at quality 75."""
  h, w = image.shape[:2]
  dy, dx = rng.integers(1, max(2, h // 100 + 1), 2)
  buffer = io.BytesIO()
  Image.fromarray(image[dy:h - dy, dx:w - dx]).resize((w * 9 // 10, h * 9 // 10)).save(
      buffer, "JPEG", quality=75)
  return np.asarray(Image.open(buffer).convert("RGB"))


def descriptor(image: np.ndarray) -> np.ndarray:
  grey = Image.fromarray(image).convert("L").filter(ImageFilter.GaussianBlur(image.shape[0] / 32))
  x = np.asarray(grey.resize((16, 16), Image.BILINEAR), np.float32).ravel()
  x -= x.mean()
  return x / np.linalg.norm(x)


@pytest.fixture(scope="module")
def planted():
  """Pool: the distinct tiles (ids 0..n-1), then one or two copies of some of them, shuffled in;
  evaluation: copies of a few other tiles."""
  rng = np.random.default_rng(0)
  tiles = photo_tiles()
  n = len(tiles)
  copied = rng.choice(n, 25, replace=False)
  twice = copied[:5]  # components of three images
  copies = [(i, near_copy(tiles[i], rng)) for i in [*copied, *twice]]
  evaluated = rng.choice(np.setdiff1d(np.arange(n), copied), 6, replace=False)
  vectors = np.stack([descriptor(t) for t in tiles] + [descriptor(c) for _, c in copies])
  evaluation = np.stack([descriptor(near_copy(tiles[i], rng)) for i in evaluated])
  return {"vectors": vectors, "originals": n, "copy_of": np.array([i for i, _ in copies]),
          "evaluation": evaluation, "evaluated": np.sort(evaluated)}


def _config(shards_per_block=1):
  config = tiny_config()
  config.dedup.threshold = 0.97
  config.dedup.evaluation_threshold = 0.97
  config.search.shards_per_block = shards_per_block
  return config


def _workdir(tmp_path, planted, with_evaluation=True):
  store.write_embeddings(embed.collection_dir(str(tmp_path), "pool"), planted["vectors"], shard_size=40)
  if with_evaluation:
    store.write_embeddings(embed.collection_dir(str(tmp_path), "evaluation"), planted["evaluation"], 40)
  return str(tmp_path)


def test_planted_duplicates_keep_exactly_one_each(tmp_path, planted):
  config = _config()
  config.data.evaluation = ""
  summary = dedup.run(config, _workdir(tmp_path, planted, with_evaluation=False))
  removed = np.load(tmp_path / "dedup/removed_self.npy")
  copies = np.arange(planted["originals"], len(planted["vectors"]))
  np.testing.assert_array_equal(removed, copies)  # every copy goes, no original does
  assert summary["duplicate_components"] == 25 and summary["kept"] == planted["originals"]
  np.testing.assert_array_equal(dedup.load_keep(str(tmp_path)), np.arange(planted["originals"]))


def test_pool_images_near_evaluation_images_are_removed(tmp_path, planted):
  summary = dedup.run(_config(), _workdir(tmp_path, planted))
  np.testing.assert_array_equal(np.load(tmp_path / "dedup/removed_evaluation.npy"), planted["evaluated"])
  assert summary["kept"] == planted["originals"] - len(planted["evaluated"])


def test_split_over_processes_equals_one_process(tmp_path, planted):
  one = _workdir(tmp_path / "one", planted)
  dedup.run(_config(shards_per_block=1), one)
  two = _workdir(tmp_path / "two", planted)
  assert dedup.run(_config(shards_per_block=1), two, process_index=1, process_count=2) is None  # waits
  dedup.run(_config(shards_per_block=1), two, process_index=0, process_count=2)
  for name in ("keep", "removed_self", "removed_evaluation"):
    np.testing.assert_array_equal(np.load(f"{one}/dedup/{name}.npy"), np.load(f"{two}/dedup/{name}.npy"))


def test_components_keep_the_lowest_id_against_a_bfs_reference():
  rng = np.random.default_rng(1)
  edges = rng.integers(0, 60, (40, 2))
  edges = edges[edges[:, 0] != edges[:, 1]]
  removed, count = dedup.components_to_remove(edges)
  neighbours = {}
  for a, b in edges:
    neighbours.setdefault(a, set()).add(b)
    neighbours.setdefault(b, set()).add(a)
  seen, expected, components = set(), [], 0
  for start in sorted(neighbours):
    if start in seen:
      continue
    component, frontier = {start}, [start]
    while frontier:
      for n in neighbours[frontier.pop()] - component:
        component.add(n)
        frontier.append(n)
    seen |= component
    components += 1
    expected += sorted(component)[1:]
  assert count == components
  np.testing.assert_array_equal(removed, sorted(expected))


def test_missing_embeddings_name_the_step_to_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="run the `embed` step first"):
    dedup.run(_config(), str(tmp_path))
