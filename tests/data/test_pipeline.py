import numpy as np
import pytest
from PIL import Image

from dinojax.data import pipeline, sources
from dinojax.data.multi_crop import MultiCrop

SMALL = MultiCrop(global_size=32, local_size=16, num_local=3)


def test_multi_crop_shapes_dtypes_and_determinism():
  image = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
  out = SMALL(image, np.random.default_rng(3))
  assert out["global_crops"].shape == (2, 32, 32, 3) and out["global_crops"].dtype == np.float32
  assert out["local_crops"].shape == (3, 16, 16, 3)
  again = SMALL(image, np.random.default_rng(3))
  other = SMALL(image, np.random.default_rng(4))
  np.testing.assert_array_equal(out["global_crops"], again["global_crops"])
  assert not np.array_equal(out["local_crops"], other["local_crops"])
  # Normalised with ImageNet statistics: values roughly centred, not in [0, 255].
  assert -3 < out["global_crops"].mean() < 3


def test_ssl_batches_resume_exactly_from_iterator_state():
  ds, _ = pipeline.ssl_dataset(sources.Digits("train"), 8, SMALL, patch_size=4, seed=0)
  it = iter(ds)
  first = next(it)
  assert first["masks"].shape == (8, 2, 64) and first["masks"].dtype == bool
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = iter(ds)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_one_image_per_mask_group_or_host():
  # One image per device (mask groups of 1), or per host: batches of 1 in an endless run.
  ds, _ = pipeline.ssl_dataset(sources.Digits("train"), 2, SMALL, 4, seed=0, mask_group=1)
  grouped, _ = pipeline.ssl_dataset(sources.Digits("train"), 2, SMALL, 4, seed=0)
  one, two = next(iter(ds)), next(iter(grouped))
  assert one["masks"].shape == (2, 2, 64)
  np.testing.assert_array_equal(one["global_crops"], two["global_crops"])  # same images, same crops
  ds, _ = pipeline.ssl_dataset(sources.Digits("train"), 2, SMALL, 4, seed=0, process_index=1,
                               process_count=2)
  assert next(iter(ds))["local_crops"].shape == (1, 3, 16, 16, 3)


def test_hosts_read_disjoint_data():
  seen = []
  for host in range(2):
    ds, _ = pipeline.ssl_dataset(sources.Digits("train"), 4, SMALL, 4, seed=0, process_index=host,
                                 process_count=2)
    seen.append(next(iter(ds))["global_crops"])
  assert not np.array_equal(seen[0], seen[1])


def test_corrupt_images_are_skipped_and_counted_once_each(tmp_path, monkeypatch):
  warned = []
  monkeypatch.setattr(pipeline.logging, "warning", lambda *args: warned.append(args[1]))
  for i in range(6):
    Image.fromarray(np.full((24, 24, 3), 40 * i, np.uint8)).save(tmp_path / f"ok_{i}.png")
  for name in ("broken.jpg", "empty.png"):
    (tmp_path / name).write_bytes(b"not an image" if name == "broken.jpg" else b"")
  source = sources.ImageFolder(str(tmp_path))
  ds, skipped = pipeline.ssl_dataset(source, 4, SMALL, 4, seed=0, num_threads=1)
  it = iter(ds)
  batches = [next(it) for _ in range(4)]  # 16 good images: more than two passes over the folder
  assert all(b["global_crops"].shape == (4, 2, 32, 32, 3) for b in batches)
  bad = sorted(str(tmp_path / n) for n in ("broken.jpg", "empty.png"))
  assert (skipped.count, sorted(warned)) == (2, bad)
  # A resumed run (its counter restored from the checkpoint metadata) knows them already.
  resumed = pipeline.SkipCounter()
  resumed.restore({"step": 20, **skipped.state()})
  resumed.skip(bad[0], ValueError("again"))
  assert (resumed.count, len(warned)) == (2, 2)
  for image in (b"\x00", b"\x00", b"\x01"):  # encoded bytes are told apart by their content
    resumed.skip(image, ValueError("truncated"))
  assert (resumed.count, len(warned)) == (4, 4)


def test_classification_batches_are_labelled_crops_split_over_hosts_and_skip_bad_images(tmp_path):
  for label in ("a", "b"):
    (tmp_path / label).mkdir()
    for i in range(3):
      Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / label / f"{i}.png")
  (tmp_path / "b" / "broken.jpg").write_bytes(b"not an image")
  source = sources.ImageFolder(str(tmp_path))
  ds, skipped = pipeline.classification_dataset(source, 8, 16, seed=0, num_threads=1)
  whole = next(iter(ds))
  assert whole["image"].shape == (8, 16, 16, 3) and whole["image"].dtype == np.float32
  assert whole["label"].dtype == np.int32 and set(whole["label"]) <= {0, 1} and skipped.count >= 1
  np.testing.assert_array_equal(next(iter(ds))["image"], whole["image"])  # a function of the seed
  # Global batch k is the same images, however many hosts read it.
  halves = [next(iter(pipeline.classification_dataset(source, 8, 16, 0, process_index=h,
                                                      process_count=2)[0])) for h in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["label"] for h in halves]), whole["label"])
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), whole["image"])


def test_digits_are_scikit_learns_split_80_20():
  from sklearn.datasets import load_digits
  digits = load_digits()
  train, heldout = sources.Digits("train", size=8), sources.Digits("heldout", size=8)
  assert (len(train), len(heldout)) == (1437, 360)
  order = np.random.default_rng(0).permutation(len(digits.target))
  labels = np.concatenate([train.labels, heldout.labels])
  np.testing.assert_array_equal(labels, digits.target[order])
  images = np.concatenate([train.images, heldout.images])  # at 8 px, the scans themselves
  np.testing.assert_array_equal(images[..., 0], (digits.images[order] * (255 / 16)).astype(np.uint8))
  assert images.shape[-1] == 3 and (images[..., 0] == images[..., 2]).all()


def test_sources_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="Image folder not found"):
    sources.ImageFolder(str(tmp_path / "nope"))
  with pytest.raises(ValueError, match="No images"):
    sources.ImageFolder(str(tmp_path))
  with pytest.raises(ValueError, match="Unknown data source"):
    sources.make_source("imagenet", "train")


def test_eval_dataset_pads_last_batch():
  source = sources.Digits("heldout")
  batches = list(pipeline.eval_dataset(source, 100, 32))
  assert sum(int(b["valid"].sum()) for b in batches) == len(source)
  assert batches[-1]["image"].shape == (100, 32, 32, 3)


def test_eval_dataset_leaves_out_unreadable_images_and_names_an_empty_source(tmp_path):
  for i in range(3):
    Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
  (tmp_path / "0_broken.jpg").write_bytes(b"not an image")  # sorts second
  skipped = pipeline.SkipCounter()
  (batch,) = pipeline.eval_dataset(sources.ImageFolder(str(tmp_path)), 6, 16, skipped=skipped)
  assert batch["valid"].tolist() == [True, False, True, True, False, False] and skipped.count == 1
  assert batch["image"].shape == (6, 16, 16, 3) and not batch["image"][1].any()
  with pytest.raises(ValueError, match="has no images"):
    next(pipeline.eval_dataset([], 2, 16))
