"""Semantic segmentation metrics: a confusion matrix accumulated in JAX, and mIoU from it (the mmseg
convention the open-vocabulary protocol reports: classes absent from both prediction and ground truth
are left out of the mean; label 255 is ignored), and the dataset-level evaluation of open-vocabulary
segmenters with the `talk2dino_eval` job."""

import collections
import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from dinojax import hub, parallel
from dinojax.data import segmentation as seg_data
from dinojax.evaluators import open_vocab, talk2dino

IGNORE_INDEX = 255


@jax.jit(static_argnames=("num_classes", "ignore_index"))
def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """(num_classes, num_classes) counts, rows = ground truth, columns = prediction; pixels labelled
  `ignore_index` (or outside [0, num_classes)) do not count."""
  labels, predictions = labels.reshape(-1), predictions.reshape(-1)
  valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
  index = jnp.where(valid, labels * num_classes + jnp.clip(predictions, 0, num_classes - 1), 0)
  counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index].add(valid.astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
  """TP / (TP + FP + FN) per class; NaN where the class appears in neither."""
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
  return float(np.nanmean(iou_per_class(confusion)))


# ---------------------------------------------------------------------------------------------------
# Dataset-level mIoU of an open-vocabulary segmenter (any model, through an `open_vocab.WindowScorer`)
# ---------------------------------------------------------------------------------------------------
def _image_confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """`confusion_matrix` of one image; inputs are padded (with ignored pixels) to a power of two so
  images of many sizes share a few compilations."""
  labels, predictions = labels.reshape(-1), predictions.reshape(-1)
  size = 1 << max(int(np.ceil(np.log2(max(labels.size, 1)))), 10)
  labels = np.pad(labels, (0, size - labels.size), constant_values=IGNORE_INDEX)
  predictions = np.pad(predictions, (0, size - predictions.size))
  return np.asarray(confusion_matrix(labels, predictions, num_classes), np.int64)


def dataset_miou(source, benchmark, predict, *, max_images: int = 0, progress: bool = True) -> dict:
  """mIoU (and per-class IoU) over `source` (a `data.segmentation` source, its first `max_images`;
  0: all): `predict(images)` yields, in order, each RGB image's (H, W) labels in the benchmark's
  evaluation space (background 0 when it has one); confusion matrices summed over every host's
  share of the images."""
  count = len(source) if not max_images else min(max_images, len(source))
  if count == 0:
    raise ValueError("The segmentation source has no images.")
  mine = range(jax.process_index(), count, jax.process_count())
  masks = collections.deque()

  def images():
    for i in mine:
      item = source[i]
      masks.append((item["name"], seg_data.to_eval_labels(item["mask"], benchmark)))
      yield item["image"]

  num_classes = benchmark.num_classes
  confusion = np.zeros((num_classes, num_classes), np.int64)
  bar = tqdm(total=len(mine), disable=not progress or jax.process_index() != 0, unit="img",
             desc="mIoU", dynamic_ncols=True, mininterval=1.0)
  for labels in predict(images()):
    name, mask = masks.popleft()
    if mask.shape != labels.shape:
      raise ValueError(f"Image {name}: mask is {mask.shape[0]}×{mask.shape[1]} but the image is "
                       f"{labels.shape[0]}×{labels.shape[1]}.")
    confusion += _image_confusion(mask, labels, num_classes)
    bar.update(1)
  bar.close()
  if jax.process_count() > 1:
    confusion = np.asarray(multihost_utils.process_allgather(confusion)).sum(axis=0)
  iou = iou_per_class(confusion)
  return {"miou": mean_iou(confusion), "images": count,
          **{f"iou/{name}": float(v) for name, v in zip(benchmark.class_names, iou)}}


def evaluate_open_vocab(source, benchmark, score_windows, query_to_class: Sequence[int], *,
                        background_threshold: float | None = None, max_images: int = 0,
                        batch_size: int = 8, sharding=None, progress: bool = True,
                        **window_kwargs) -> dict:
  """`dataset_miou` of `score_windows` in the training-free protocol: sliding windows
  (`window_kwargs`: short_side, window, stride), scores of synonyms reduced to their class,
  background where no class beats `background_threshold` (only for benchmarks with a background
  class)."""
  threshold = background_threshold if benchmark.background else None

  def predict(images):
    for scores in open_vocab.sliding_window_scores(images, score_windows, batch_size=batch_size,
                                                   sharding=sharding, **window_kwargs):
      scores = open_vocab.reduce_queries(scores, query_to_class)
      yield open_vocab.scores_to_labels(scores, threshold) + benchmark.background

  return dataset_miou(source, benchmark, predict, max_images=max_images, progress=progress)


def make_source(spec: str, split: str, benchmark, image_key: str = "image", mask_key: str = "annotation"):
  """A `data.segmentation` source of `benchmark`'s images and masks (`image_key`/`mask_key` name
  TFDS features)."""
  keys = {"image_key": image_key, "mask_key": mask_key} if spec.startswith("tfds:") else {}
  return seg_data.make_segmentation_source(spec, benchmark, split, **keys)


def benchmark_of(benchmark: seg_data.Benchmark | str) -> seg_data.Benchmark:
  """A `data.segmentation.Benchmark`, or one of `BENCHMARKS` by name."""
  if isinstance(benchmark, seg_data.Benchmark):
    return benchmark
  if benchmark not in seg_data.BENCHMARKS:
    raise ValueError(f"Unknown benchmark {benchmark!r}; choose one of {sorted(seg_data.BENCHMARKS)}.")
  return seg_data.BENCHMARKS[benchmark]


def local_mesh(config):
  """(mesh, rules) over this host's devices: the evaluation jobs split each batch of windows over
  them and the images over hosts."""
  mesh = parallel.make_mesh(config.mesh, devices=jax.local_devices())
  if config.batch_size % mesh.size:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by the {mesh.size} local devices.")
  return mesh, tuple(tuple(r) for r in config.sharding_rules)


class Talk2DINOSegmentation:
  """`talk2dino_segmentation(params) -> {"miou", "images", "iou/<class>"}` (the `evaluators.base`
  protocol): Talk2DINO's open-vocabulary mIoU (`evaluate_open_vocab`) on `source`'s `split` of
  `benchmark` (a `data.segmentation.Benchmark`, or a name of `BENCHMARKS`), its first `max_images`
  (0: all). `params` are {"backbone", "text", "projection"}, the variables of `backbone`,
  `text_encoder` and `projection` (ψ, the part Talk2DINO trains); the classes are embedded in
  `templates` at each call. Windows go `batch_size` at a time over `mesh`, this host's devices
  (`local_mesh`), and every host scores its share of the images. The settings are
  `talk2dino.window_scorer`'s and `open_vocab.sliding_window_scores`'."""

  def __init__(self, *, source: str, split: str, benchmark, backbone, text_encoder, projection, mesh,
               rules, image_key: str = "image", mask_key: str = "annotation", batch_size: int = 8,
               max_images: int = 0, short_side: int = open_vocab.SHORT_SIDE,
               window: int = open_vocab.WINDOW, stride: int = open_vocab.STRIDE,
               templates="sub_imagenet", pamr: bool = True, background_threshold: float = 0.4,
               background_cleaning: bool = False, lambda_bg: float = 0.2):
    self.benchmark = benchmark_of(benchmark)
    if not self.benchmark.classes:
      raise ValueError("No class names: set config.dataset.classes or config.class_names_file.")
    self.source, self.split, self.keys = source, split, dict(image_key=image_key, mask_key=mask_key)
    self.backbone, self.text_encoder, self.projection = backbone, text_encoder, projection
    self.mesh, self.rules = mesh, rules
    self.queries, self.owners = seg_data.class_queries(self.benchmark.classes)
    self.templates, self.batch_size, self.max_images = templates, batch_size, max_images
    self.scorer = dict(window=window, background_cleaning=background_cleaning, lambda_bg=lambda_bg,
                       pamr=pamr)
    self.windows = dict(short_side=short_side, window=window, stride=stride)
    self.background_threshold = background_threshold

  def __call__(self, params) -> dict:
    replicated = NamedSharding(self.mesh, P())
    models = hub.Talk2DINOModels(self.backbone, jax.device_put(params["backbone"], replicated),
                                 self.text_encoder, params["text"], self.projection, params["projection"])
    text = jax.device_put(talk2dino.class_embeddings(models, self.queries, self.templates), replicated)
    with parallel.activation_sharding(self.mesh, self.rules):
      return evaluate_open_vocab(
          make_source(self.source, self.split, self.benchmark, **self.keys), self.benchmark,
          talk2dino.window_scorer(models, text, **self.scorer), self.owners,
          background_threshold=self.background_threshold, max_images=self.max_images,
          batch_size=self.batch_size, sharding=parallel.batch_sharding(self.mesh, self.rules, 4),
          **self.windows)


def run(config, workdir: str) -> dict:
  """The `talk2dino_eval` job: Talk2DINO's mIoU on one benchmark (`configs/talk2dino_eval.py`), by
  `Talk2DINOSegmentation`, written to WORKDIR/miou.json."""
  os.makedirs(workdir, exist_ok=True)
  benchmark = seg_data.Benchmark(**{**config.dataset.to_dict(), "classes": tuple(config.dataset.classes)})
  if config.class_names_file:
    benchmark = dataclasses.replace(benchmark, classes=seg_data.read_class_names(config.class_names_file))
  mesh, rules = local_mesh(config)
  m = config.model
  models = hub.talk2dino(m.backbone, m.backbone_checkpoint, m.clip_checkpoint, m.projection,
                         m.projection_config, config.seed, m.backbone_overrides.to_dict(),
                         m.text_overrides.to_dict())
  missing = [n for n in ("backbone_checkpoint", "clip_checkpoint", "projection") if not m[n]]
  if missing:
    logging.warning("No %s: those parts are randomly initialised; the mIoU measures the pipeline, "
                    "not Talk2DINO.", ", ".join(missing))
  evaluator = Talk2DINOSegmentation(
      source=config.data.source, split=config.data.split, benchmark=benchmark,
      image_key=config.data.image_key, mask_key=config.data.mask_key, backbone=models.backbone,
      text_encoder=models.text_encoder,
      projection=models.projection, mesh=mesh, rules=rules, batch_size=config.batch_size,
      max_images=config.max_images, **config.segment)
  result = evaluator({"backbone": models.backbone_params, "text": models.text_params,
                      "projection": models.projection_params})
  logging.info("mIoU %.2f%% over %d images", 100 * result["miou"], result["images"])
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "miou.json"), "w") as f:
      json.dump(result, f, indent=1)
  return result
