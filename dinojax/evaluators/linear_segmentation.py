"""Semantic segmentation with the released DINOv2 heads (`models/segmenter.py`, `hub.dinov2_segmenter`),
run as the paper's evaluation runs them, through mmseg's test pipeline (§7.4, Table 11):

- resize, keeping the aspect ratio, to fit 2048×512 (short side 512) times each test ratio: 1.0 for
  the "linear" heads; 1.0, 1.32, 1.73, 2.28, 3.0 and horizontal flips for "+ms";
- score 512×512 windows at stride 341 (mmseg's `slide_inference`); each window is ImageNet-normalised,
  centre-padded to a multiple of the patch size, and its patch logits resized (bilinear) to the
  window; overlapping windows are averaged and resized back to the image;
- softmax per resized or flipped copy, the average over the copies, argmax.

The `linear_segmentation_eval` job scores mIoU over ADE20k or VOC2012 (`configs/linear_segmentation_eval.py`):

  python -m dinojax.main --config configs/linear_segmentation_eval.py:ade20k,backbone=vitl14 \
      --workdir workdir/seg_ade --config.data.source=folder:data/ade \
      --config.backbone.checkpoint=dinov2_vitl14_pretrain.pth \
      --config.head.checkpoint=dinov2_vitl14_ade20k_linear_head.pth
"""

import functools
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from dinojax import hub, parallel
from dinojax.data import images as image_lib
from dinojax.evaluators import open_vocab, segmentation
from dinojax.models.segmenter import LinearSegmenter

SHORT_SIDE, LONG_SIDE, WINDOW, STRIDE = 512, 2048, 512, 341
MS_RATIOS = (1.0, 1.32, 1.73, 2.28, 3.0)  # the "+ms" heads' test scales


@functools.partial(jax.jit, static_argnames=("model",))
def _window_logits(params, windows, *, model: LinearSegmenter):
  x = image_lib.normalize_pixels(windows)
  logits = jnp.moveaxis(model.apply(params, x), -1, 1)  # (b, classes, h', w')
  # mmseg's `encode_decode`: the padded image's patch logits resized to the unpadded window.
  return open_vocab.upsample_scores(logits, windows.shape[1:3], align_corners=False)


def window_scorer(model: LinearSegmenter, params: dict) -> open_vocab.WindowScorer:
  """(b, h, w, 3) RGB windows in [0, 255] -> (b, classes, h, w) logits."""
  return functools.partial(_window_logits, params, model=model)


def class_probabilities(image: np.ndarray, scorer: open_vocab.WindowScorer, *,
                        ratios: Sequence[float] = (1.0,), flip: bool = False,
                        short_side: int = SHORT_SIDE, long_side: int = LONG_SIDE, window: int = WINDOW,
                        stride: int = STRIDE, batch_size: int = 8, sharding=None) -> jax.Array:
  """(classes, H, W) probabilities for an RGB image (H, W, 3): mmseg's `aug_test`, the softmax of
  each resized (and, with `flip`, mirrored) copy's sliding-window logits, averaged."""
  if not len(ratios):
    raise ValueError("ratios must list at least one test scale.")
  total, copies = None, 0
  for ratio in ratios:
    for mirrored in (False, True) if flip else (False,):
      x = np.ascontiguousarray(image[:, ::-1]) if mirrored else image
      logits, = open_vocab.sliding_window_scores(
          [x], scorer, short_side=int(short_side * ratio), long_side=int(long_side * ratio),
          window=window, stride=stride, batch_size=batch_size, sharding=sharding)
      probs = jax.nn.softmax(logits, axis=0)
      probs = probs[:, :, ::-1] if mirrored else probs
      total, copies = probs if total is None else total + probs, copies + 1
  return total / copies


def segment(image: np.ndarray, model: LinearSegmenter, params: dict, **protocol) -> np.ndarray:
  """(H, W) int32 class indices of an RGB image (H, W, 3) by a released head (`hub.dinov2_segmenter`);
  `protocol` as `class_probabilities` (`ratios=MS_RATIOS, flip=True` for the "+ms" heads)."""
  image = image_lib.to_rgb(np.asarray(image))
  if "batch_size" not in protocol:  # one image: batches of its windows at scale 1, none padded
    size = open_vocab.rescale_size(*image.shape[:2], protocol.get("short_side", SHORT_SIDE),
                                   protocol.get("long_side", LONG_SIDE))
    protocol["batch_size"] = len(open_vocab.window_grid(*size, protocol.get("window", WINDOW),
                                                        protocol.get("stride", STRIDE)))
  return open_vocab.scores_to_labels(class_probabilities(image, window_scorer(model, params), **protocol))


# ---------------------------------------------------------------------------------------------------
# The evaluator, and the `linear_segmentation_eval` job that runs it on a released head
# ---------------------------------------------------------------------------------------------------
class LinearSegmentation:
  """`linear_segmentation(params) -> {"miou", "images", "iou/<class>"}` (the `evaluators.base`
  protocol): the mIoU of `segmenter` (a `LinearSegmenter`; `params` as `hub.dinov2_segmenter` gives
  them) on `source`'s `split` of `benchmark` (a name of `data.segmentation.BENCHMARKS`), its first
  `max_images` (0: all), in the paper's protocol (`class_probabilities`: test scales `ratios`,
  `flip`, windows). Windows go `batch_size` at a time over `mesh`, this host's devices
  (`segmentation.local_mesh`), and every host scores its share of the images."""

  def __init__(self, *, source: str, split: str, benchmark: str, segmenter: LinearSegmenter, mesh, rules,
               image_key: str = "image", mask_key: str = "annotation", batch_size: int = 8,
               max_images: int = 0, ratios: Sequence[float] = (1.0,), flip: bool = False,
               short_side: int = SHORT_SIDE, long_side: int = LONG_SIDE, window: int = WINDOW,
               stride: int = STRIDE):
    self.benchmark = segmentation.benchmark_of(benchmark)
    if segmenter.num_classes != self.benchmark.num_classes:
      raise ValueError(f"The head predicts {segmenter.num_classes} classes; {benchmark} has "
                       f"{self.benchmark.num_classes} ({'with' if self.benchmark.background else 'without'} "
                       "background).")
    self.source, self.split, self.keys = source, split, dict(image_key=image_key, mask_key=mask_key)
    self.segmenter, self.mesh, self.rules, self.max_images = segmenter, mesh, rules, max_images
    self.protocol = dict(ratios=tuple(ratios), flip=flip, short_side=short_side, long_side=long_side,
                         window=window, stride=stride, batch_size=batch_size,
                         sharding=parallel.batch_sharding(mesh, rules, 4))

  def __call__(self, params) -> dict:
    scorer = window_scorer(self.segmenter, jax.device_put(params, NamedSharding(self.mesh, P())))
    predict = lambda images: (open_vocab.scores_to_labels(class_probabilities(image, scorer, **self.protocol))
                              for image in images)
    with parallel.activation_sharding(self.mesh, self.rules):
      return segmentation.dataset_miou(
          segmentation.make_source(self.source, self.split, self.benchmark, **self.keys), self.benchmark,
          predict, max_images=self.max_images)


def run(config, workdir: str) -> dict:
  """mIoU (and per-class IoU) of a released head on a benchmark (`LinearSegmentation`), written to
  WORKDIR/miou.json."""
  os.makedirs(workdir, exist_ok=True)
  benchmark = segmentation.benchmark_of(config.benchmark)
  b = config.backbone
  model, params = hub.dinov2_segmenter(b.name, b.checkpoint or None, config.head.checkpoint or None,
                                       config.head.layers, benchmark.num_classes, config.seed,
                                       **b.overrides.to_dict())
  if not b.checkpoint or not config.head.checkpoint:
    logging.warning("No backbone.checkpoint or head.checkpoint: random weights; the mIoU measures the "
                    "pipeline, not DINOv2.")
  mesh, rules = segmentation.local_mesh(config)  # params replicated, windows split
  d, s = config.data, config.segment
  evaluator = LinearSegmentation(source=d.source, split=d.split, benchmark=config.benchmark,
                                 image_key=d.image_key, mask_key=d.mask_key, segmenter=model, mesh=mesh,
                                 rules=rules, batch_size=config.batch_size, max_images=config.max_images,
                                 **s)
  result = evaluator(params)
  logging.info("mIoU %.2f%% over %d images (%s, %d block%s, %d scale%s%s)", 100 * result["miou"],
               result["images"], config.benchmark, model.layers, "s" * (model.layers > 1), len(s.ratios),
               "s" * (len(s.ratios) > 1), " + flips" if s.flip else "")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "miou.json"), "w") as f:
      json.dump(result, f, indent=1)
  return result
