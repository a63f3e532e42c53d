"""Semantic segmentation benchmarks for open-vocabulary evaluation: image/mask readers (a folder of
pairs in any layout, mmseg's layouts of the standard datasets, TFDS) and the class names of the
training-free protocol (Talk2DINO, FreeDA and GroupViT evaluate through mmseg 0.30's datasets and use
their class names; VOC20 and COCO-Object come from those repositories).

Every source yields {"image": uint8 H×W×3, "mask": uint8/int H×W labels in the evaluation class space
(255 ignored), "name": str}; `Benchmark` says how to read the labels.
"""

import dataclasses
import os
from typing import Sequence

import numpy as np
from PIL import Image

from dinojax.data import images as image_lib

IGNORE_INDEX = 255

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
CONTEXT59_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor", "bag", "bed",
    "bench", "book", "building", "cabinet", "ceiling", "cloth", "computer", "cup", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "keyboard", "light", "mountain", "mouse", "curtain",
    "platform", "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedclothes",
    "track", "tree", "truck", "wall", "water", "window", "wood")
COCO_OBJECT_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
COCO_STUFF_CLASSES = COCO_OBJECT_CLASSES + (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone",
    "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass",
    "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic",
    "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood")
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
                      "bus", "train", "motorcycle", "bicycle")
# mmseg's names, including its "bed " with a trailing space (kept: it is what the prompts contained).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair",
    "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box",
    "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet",
    "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag")


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """How a dataset is read and scored.

  classes: the names to segment (background excluded); each may list synonyms ("a; b").
  background: label 0 is a background class that no name describes, predicted where no class
    scores above the background threshold (VOC, Context-60, COCO-Object).
  reduce_zero_label: mmseg's convention for datasets whose 0 is "unlabelled": 0 becomes ignored and
    every other label moves down by one (VOC20, Context-59, ADE20k).
  The rest is mmseg's folder layout under the dataset root.
  """
  classes: tuple[str, ...]
  background: bool = False
  reduce_zero_label: bool = False
  image_dir: str = "images"
  mask_dir: str = "masks"
  image_suffix: str = ".jpg"
  mask_suffix: str = ".png"
  split_file: str = ""

  @property
  def num_classes(self) -> int:
    return len(self.classes) + self.background

  @property
  def class_names(self) -> tuple[str, ...]:
    return ("background",) * self.background + tuple(self.classes)


_VOC = dict(image_dir="JPEGImages", mask_dir="SegmentationClass",
            split_file="ImageSets/Segmentation/val.txt")
_CONTEXT = dict(image_dir="JPEGImages", mask_dir="SegmentationClassContext",
                split_file="ImageSets/SegmentationContext/val.txt")
_COCO = dict(image_dir="images/val2017", mask_dir="annotations/val2017")

# The eight benchmarks of Talk2DINO's Table 2 (their `evaluate.task` names); roots as mmseg prepares
# them: VOCdevkit/VOC2012, VOCdevkit/VOC2010, coco_stuff164k, cityscapes, ade.
BENCHMARKS = {
    "voc": Benchmark(VOC_CLASSES, background=True, **_VOC),
    "voc20": Benchmark(VOC_CLASSES, reduce_zero_label=True, **_VOC),
    "context": Benchmark(CONTEXT59_CLASSES, background=True, **_CONTEXT),
    "context59": Benchmark(CONTEXT59_CLASSES, reduce_zero_label=True, **_CONTEXT),
    "coco_object": Benchmark(COCO_OBJECT_CLASSES, background=True, mask_suffix="_instanceTrainIds.png", **_COCO),
    "coco_stuff": Benchmark(COCO_STUFF_CLASSES, mask_suffix="_labelTrainIds.png", **_COCO),
    "cityscapes": Benchmark(CITYSCAPES_CLASSES, image_dir="leftImg8bit/val", mask_dir="gtFine/val",
                            image_suffix="_leftImg8bit.png", mask_suffix="_gtFine_labelTrainIds.png"),
    "ade20k": Benchmark(ADE20K_CLASSES, reduce_zero_label=True,
                        image_dir="ADEChallengeData2016/images/validation",
                        mask_dir="ADEChallengeData2016/annotations/validation"),
}


def read_class_names(path: str) -> tuple[str, ...]:
  """A name file: one class a line, synonyms separated by ";" (ProxyCLIP's `cls_*.txt` format)."""
  with open(path) as f:
    names = tuple(line.rstrip("\n") for line in f if line.strip())
  if not names:
    raise ValueError(f"No class names in {path}.")
  return names


def class_queries(classes: Sequence[str]) -> tuple[list[str], list[int]]:
  """Flattens classes with synonyms ("cat; kitty") into text queries and each query's class index."""
  queries, owners = [], []
  for index, entry in enumerate(classes):
    names = [n.strip() for n in entry.split(";") if n.strip()]
    if not names:
      raise ValueError(f"Class {index} has an empty name.")
    queries += names
    owners += [index] * len(names)
  return queries, owners


def to_eval_labels(mask: np.ndarray, benchmark: Benchmark) -> np.ndarray:
  """Dataset labels -> the evaluation class space (int32, 255 ignored), applying mmseg's
  `reduce_zero_label`."""
  mask = np.asarray(mask)
  if mask.ndim == 3:  # masks stored as RGB/RGBA images repeat the label in every channel
    mask = mask[..., 0]
  mask = mask.astype(np.int32)
  if benchmark.reduce_zero_label:
    mask = np.where((mask == 0) | (mask == IGNORE_INDEX), IGNORE_INDEX, mask - 1)
  return mask


def _read_mask(path: str) -> np.ndarray:
  try:
    with Image.open(path) as m:
      return np.asarray(m)  # palette PNGs (VOC) give their indices, not colours
  except (OSError, ValueError) as e:
    raise ValueError(f"Cannot read mask {path!r}: {e}") from e


class SegmentationFolder:
  """Image/mask pairs under `root`: every `image_dir/**/<name><image_suffix>` with its
  `mask_dir/**/<name><mask_suffix>` (same sub-folders), optionally only the names listed in
  `split_file` (one a line, relative to root). A missing mask is an error that names it."""

  def __init__(self, root: str, benchmark: Benchmark):
    image_root, mask_root = os.path.join(root, benchmark.image_dir), os.path.join(root, benchmark.mask_dir)
    for kind, path in (("image", image_root), ("mask", mask_root)):
      if not os.path.isdir(path):
        raise FileNotFoundError(f"No {kind} folder {path}.")
    names = sorted(os.path.relpath(os.path.join(d, f), image_root)[:-len(benchmark.image_suffix)]
                   for d, _, files in os.walk(image_root) for f in files
                   if f.endswith(benchmark.image_suffix))
    if benchmark.split_file:
      split = os.path.join(root, benchmark.split_file)
      if not os.path.isfile(split):
        raise FileNotFoundError(f"No split file {split}.")
      with open(split) as f:
        wanted = [line.strip() for line in f if line.strip()]
      present = set(names)
      missing = [n for n in wanted if n not in present]
      if missing:
        raise FileNotFoundError(f"{len(missing)} images of {split} are not under {image_root}, "
                                f"e.g. {missing[0]}{benchmark.image_suffix}.")
      names = wanted
    if not names:
      raise ValueError(f"No *{benchmark.image_suffix} images under {image_root}.")
    self.pairs = []
    for name in names:
      mask = os.path.join(mask_root, name + benchmark.mask_suffix)
      if not os.path.isfile(mask):
        raise FileNotFoundError(f"Image {name}{benchmark.image_suffix} has no mask {mask}.")
      self.pairs.append((name, os.path.join(image_root, name + benchmark.image_suffix), mask))

  def __len__(self):
    return len(self.pairs)

  def __getitem__(self, i):
    name, image, mask = self.pairs[i]
    return {"image": image_lib.load_image(image), "mask": _read_mask(mask), "name": name}


class TfdsSegmentation:
  """A prepared TFDS segmentation dataset, e.g. `scene_parse150` (ADE20k's 150 classes, features
  "image" and "annotation"); the feature names are configurable."""

  def __init__(self, name: str, split: str, image_key: str = "image", mask_key: str = "annotation",
               data_dir: str | None = None):
    try:
      import tensorflow_datasets as tfds
    except ImportError as e:
      raise ImportError("TFDS sources need `pip install -e '.[tfds]'`.") from e
    self.source = tfds.data_source(name, split=split, data_dir=data_dir)
    features = set(self.source.dataset_info.features.keys())
    for key in (image_key, mask_key):
      if key not in features:
        raise KeyError(f"TFDS {name} has no feature {key!r}; it has {sorted(features)}.")
    self.image_key, self.mask_key = image_key, mask_key

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    example = self.source[i]
    return {"image": image_lib.to_rgb(np.asarray(example[self.image_key])),
            "mask": np.asarray(example[self.mask_key]), "name": str(i)}


def make_segmentation_source(name: str, benchmark: Benchmark, split: str = "validation", **tfds_keys):
  """`folder:<root>` (the benchmark's layout under root; images/ and masks/ for a custom one) or
  `tfds:<name>` (its `split`; `image_key`/`mask_key` name the features)."""
  if name.startswith("folder:"):
    return SegmentationFolder(name[len("folder:"):], benchmark)
  if name.startswith("tfds:"):
    return TfdsSegmentation(name[len("tfds:"):], split, **tfds_keys)
  raise ValueError(f"Unknown segmentation source {name!r}; use 'folder:<root>' or 'tfds:<name>'.")
