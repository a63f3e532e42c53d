"""Dataset-level mIoU: readers and label conventions, a perfect predictor scoring 1 through the same
path the models use, and the `talk2dino_eval` job end to end on a tiny synthetic folder dataset."""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dinojax.data import segmentation as seg_data
from dinojax.evaluators import segmentation

REPO = pathlib.Path(__file__).resolve().parents[2]
COLOURS = np.array([[0, 0, 0], [200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)


def _write_dataset(root, benchmark, shapes=((30, 52), (56, 30), (30, 30)), seed=0):
  """Images (short side 30: the protocol keeps their size) whose pixel colour encodes the class, and
  masks in the dataset's own label convention (some pixels 255), in `benchmark`'s folder layout."""
  rng = np.random.default_rng(seed)
  os.makedirs(root / benchmark.image_dir, exist_ok=True)
  os.makedirs(root / benchmark.mask_dir, exist_ok=True)
  for i, (h, w) in enumerate(shapes):
    labels = np.repeat(np.repeat(rng.integers(0, 4, (h // 5 + 1, w // 5 + 1)), 5, 0), 5, 1)[:h, :w]
    Image.fromarray(COLOURS[labels]).save(root / benchmark.image_dir / f"im{i}{benchmark.image_suffix}")
    stored = labels + 1 if benchmark.reduce_zero_label else labels
    stored = np.where(rng.random((h, w)) < 0.05, 255, stored).astype(np.uint8)
    Image.fromarray(stored).save(root / benchmark.mask_dir / f"im{i}{benchmark.mask_suffix}")


def _colour_oracle(crops):
  """Scores classes 1..3 by closeness of the pixel colour to theirs: a perfect predictor; black
  pixels (class 0) score below 0.5 everywhere."""
  x = crops[..., None, :] / 255.0
  target = jnp.asarray(COLOURS[1:], jnp.float32) / 255.0
  return jnp.moveaxis((1.0 - jnp.abs(x - target).sum(-1)) * (x.sum(-1) > 0.1) * 0.9, -1, 1)


@pytest.mark.slow
@pytest.mark.parametrize("background,reduce_zero_label", [(True, False), (False, True)],
                         ids=["with_background", "reduce_zero_label"])
def test_a_perfect_predictor_scores_one(tmp_path, background, reduce_zero_label):
  classes = ("red", "green", "blue") if background else ("dark", "red", "green", "blue")
  benchmark = seg_data.Benchmark(classes, background=background, reduce_zero_label=reduce_zero_label,
                                 image_suffix=".png")
  _write_dataset(tmp_path, benchmark)
  source = seg_data.make_segmentation_source(f"folder:{tmp_path}", benchmark)
  if background:
    scorer, owners = _colour_oracle, [0, 1, 2]
  else:  # the dark class gets its own score map: constant 0.5 beats the oracle only on black pixels
    scorer = lambda c: jnp.concatenate([jnp.full_like(_colour_oracle(c)[:, :1], 0.5), _colour_oracle(c)], 1)
    owners = [0, 1, 2, 3]
  result = segmentation.evaluate_open_vocab(source, benchmark, scorer, owners, background_threshold=0.5,
                                            short_side=30, window=28, stride=14, batch_size=4,
                                            progress=False)
  assert result["images"] == 3 and result["miou"] == 1.0
  assert set(result) == {"miou", "images", *(f"iou/{n}" for n in benchmark.class_names)}


def test_synonyms_take_their_best_name(tmp_path):
  benchmark = seg_data.Benchmark(("red; crimson", "green", "blue"), background=True, image_suffix=".png")
  _write_dataset(tmp_path, benchmark)
  queries, owners = seg_data.class_queries(benchmark.classes)
  assert queries == ["red", "crimson", "green", "blue"] and owners == [0, 0, 1, 2]
  # "crimson" scores nothing; the class still wins through "red".
  scorer = lambda c: jnp.concatenate([_colour_oracle(c)[:, :1], jnp.zeros_like(_colour_oracle(c)[:, :1]),
                                      _colour_oracle(c)[:, 1:]], 1)
  source = seg_data.make_segmentation_source(f"folder:{tmp_path}", benchmark)
  result = segmentation.evaluate_open_vocab(source, benchmark, scorer, owners, background_threshold=0.5,
                                            short_side=30, window=28, stride=14, progress=False)
  assert result["miou"] == 1.0


def test_readers_and_label_conventions(tmp_path):
  voc = seg_data.BENCHMARKS["voc"]
  assert voc.num_classes == 21 and voc.class_names[0] == "background"
  assert seg_data.BENCHMARKS["voc20"].num_classes == 20 and seg_data.BENCHMARKS["context"].num_classes == 60
  assert seg_data.BENCHMARKS["coco_stuff"].num_classes == 171
  assert seg_data.BENCHMARKS["ade20k"].num_classes == 150
  assert seg_data.BENCHMARKS["cityscapes"].num_classes == 19
  assert seg_data.BENCHMARKS["coco_object"].num_classes == 81
  mask = np.array([[0, 1, 255], [20, 3, 0]], np.uint8)
  np.testing.assert_array_equal(seg_data.to_eval_labels(mask, seg_data.BENCHMARKS["voc20"]),
                                [[255, 0, 255], [19, 2, 255]])
  np.testing.assert_array_equal(seg_data.to_eval_labels(mask, voc), mask)
  # mmseg's VOC layout with a split file; a listed image without a mask is named.
  _write_dataset(tmp_path, voc, shapes=((20, 30), (30, 20)))
  (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
  (tmp_path / "ImageSets/Segmentation/val.txt").write_text("im1\n")
  source = seg_data.make_segmentation_source(f"folder:{tmp_path}", voc)
  assert len(source) == 1 and source[0]["image"].shape == (30, 20, 3) and source[0]["name"] == "im1"
  os.remove(tmp_path / "SegmentationClass/im1.png")
  with pytest.raises(FileNotFoundError, match="has no mask"):
    seg_data.make_segmentation_source(f"folder:{tmp_path}", voc)
  with pytest.raises(FileNotFoundError, match="No image folder"):
    seg_data.make_segmentation_source(f"folder:{tmp_path / 'nowhere'}", voc)
  with pytest.raises(ValueError, match="empty name"):
    seg_data.class_queries(["cat", " ; "])


@pytest.mark.slow
def test_eval_job_end_to_end(tmp_path):
  benchmark = seg_data.Benchmark(("red", "green", "blue"), background=True, image_suffix=".png")
  _write_dataset(tmp_path / "data", benchmark)
  (tmp_path / "names.txt").write_text("red; crimson\ngreen\nblue\n")
  cmd = [sys.executable, "-m", "dinojax.main", "--config", f"{REPO / 'configs/talk2dino_eval.py'}:custom,tiny",
         "--workdir", str(tmp_path / "work"), f"--config.data.source=folder:{tmp_path / 'data'}",
         f"--config.class_names_file={tmp_path / 'names.txt'}", "--config.dataset.background=True",
         "--config.dataset.image_suffix=.png", "--config.segment.pamr=True"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  assert "randomly initialised" in result.stderr
  out = json.loads((tmp_path / "work/miou.json").read_text())
  assert out["images"] == 3 and 0.0 <= out["miou"] <= 1.0
  assert set(out) == {"miou", "images", "iou/background", "iou/red; crimson", "iou/green", "iou/blue"}
