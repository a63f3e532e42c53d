"""Image–caption pairs for the text-alignment recipes (dino.txt, Talk2DINO): sources and grain pipelines.

Every source yields {"image": uint8 H×W×3, a path or encoded bytes, "captions": tuple[str, ...],
"label": int (-1 when unknown)}; the training pipeline picks one caption per visit, as COCO-style
training does with its five captions per image.
"""

import json
import os
import re
from typing import Callable

import grain
import numpy as np
from PIL import Image

from dinojax.data import augment, pipeline, sources
from dinojax.data import images as image_lib

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_CAPTIONS = ("a handwritten digit {name}.", "the number {digit}, written by hand.",
                   "a scan of a handwritten {name}.", "a small grey picture of the digit {digit}.")


class DigitCaptions:
  """scikit-learn's digits (`sources.Digits`) with captions written from their labels: the offline
  real set of the tiny text-alignment configs. Class names are the digits' English names."""

  class_names = DIGIT_NAMES
  num_classes = 10

  def __init__(self, split: str = "train", size: int = 32):
    self.digits = sources.Digits(split, size)

  def __len__(self):
    return len(self.digits)

  def __getitem__(self, i):
    item = self.digits[i]
    label = item["label"]
    captions = tuple(t.format(name=DIGIT_NAMES[label], digit=label) for t in _DIGIT_CAPTIONS)
    return {"image": item["image"], "captions": captions, "label": label}


class JsonlCaptions:
  """A JSON-lines file, one pair a line: {"image": path, "caption": str} or {"image": path,
  "captions": [str, ...]}, optionally "label"; relative paths are read from the file's folder."""

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"Caption file not found: {path}")
    root = os.path.dirname(os.path.abspath(path))
    self.items = []
    with open(path) as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number}: not valid JSON ({e}).") from e
        captions = row.get("captions", [row["caption"]] if "caption" in row else [])
        if "image" not in row or not captions or not all(isinstance(c, str) for c in captions):
          raise ValueError(f"{path}:{number}: needs \"image\" and a non-empty \"caption\"/\"captions\".")
        self.items.append({"image": os.path.join(root, row["image"]), "captions": tuple(captions),
                           "label": int(row.get("label", -1))})
    if not self.items:
      raise ValueError(f"No image–caption pairs in {path}.")

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    return self.items[i]


class TfdsCaptions:
  """A prepared TFDS captioning dataset such as `coco_captions` (features "image" and
  "captions"/"text"), read through its random-access data source."""

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    try:
      import tensorflow_datasets as tfds
    except ImportError as e:
      raise ImportError("TFDS sources need `pip install -e '.[tfds]'`.") from e
    self.source = tfds.data_source(name, split=split, data_dir=data_dir)

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    example = self.source[i]
    texts = example["captions"]["text"] if "captions" in example else [example["caption"]]
    captions = tuple(t.decode() if isinstance(t, bytes) else str(t) for t in texts)
    return {"image": example["image"], "captions": captions, "label": -1}


class SlicedCaptions:
  """Pairs [start, stop) of a caption source, renumbered from 0 (`split="train[0:1000]"`)."""

  def __init__(self, source, indices: range):
    self.source, self.indices = source, indices

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[self.indices[i]]


class CuratedCaptions:
  """The pairs a curation kept (`python -m dinojax.curate sample` with a dino.txt curation config,
  docs/curation.md): `<folder>/selected.npy` holds pair ids of the caption source and split named in
  `<folder>/selection.json`, so the folder alone says what to read."""

  def __init__(self, folder: str, **kwargs):
    manifest = os.path.join(folder, "selection.json")
    if not os.path.isfile(manifest):
      raise FileNotFoundError(f"No curated selection at {folder} (no selection.json): run the "
                              "curation's `sample` step first (python -m dinojax.curate sample ...).")
    with open(manifest) as f:
      selection = json.load(f)
    self.source = make_caption_source(selection["pairs"], selection["split"], **kwargs)
    self.ids = np.load(os.path.join(folder, "selected.npy"))
    if len(self.ids) == 0:
      raise ValueError(f"The curated selection at {folder} is empty.")
    if self.ids.min() < 0 or self.ids.max() >= len(self.source):
      raise ValueError(f"The curated selection at {folder} names pairs outside "
                       f"{selection['pairs']}:{selection['split']} ({len(self.source)} pairs).")

  def __len__(self):
    return len(self.ids)

  def __getitem__(self, i):
    return self.source[int(self.ids[i])]


def make_caption_source(name: str, split: str, **kwargs):
  """`digits`, `jsonl:<file>` (or `jsonl:<folder>`, reading `<folder>/<split>.jsonl`), `tfds:<name>`,
  or `curated:<folder>` (a curation's selection, which names its own source and split: `split` is
  not used). A split may end in a slice, `train[0:1000]`."""
  if name.startswith("curated:"):
    return CuratedCaptions(name[len("curated:"):], **kwargs)
  match = re.fullmatch(r"(.*?)\[(\d*):(\d*)\]", split)
  if match:
    source = make_caption_source(name, match.group(1), **kwargs)
    return SlicedCaptions(source, range(len(source))[slice(int(match.group(2) or 0),
                                                           int(match.group(3)) if match.group(3) else None)])
  if name == "digits":
    return DigitCaptions(split, **kwargs)
  if name.startswith("jsonl:"):
    path = name[len("jsonl:"):]
    return JsonlCaptions(os.path.join(path, f"{split}.jsonl") if os.path.isdir(path) else path)
  if name.startswith("tfds:"):
    return TfdsCaptions(name[len("tfds:"):], split, **kwargs)
  raise ValueError(f"Unknown caption source {name!r}; use 'digits', 'jsonl:<path>', 'tfds:<name>' or "
                   "'curated:<folder>'.")


def caption_dataset(source, global_batch: int, image_size: int, seed: int,
                    tokenize: Callable[[str], np.ndarray], process_index: int = 0,
                    process_count: int = 1, num_threads: int = 2,
                    crop_scale: tuple[float, float] | None = None):
  """This host's part of every global batch: {"image" (b, S, S, 3) float32 normalised, "tokens"
  (b, L) int32, "label" (b,)} with b = global_batch / process_count.

  Images are centre crops (short side resized to S) or, with `crop_scale`, random resized crops
  (never flipped: captions say "left" and "right"). One caption per visit, drawn with the element's
  rng. Element i is a function of (seed, i) only, so the data does not depend on the host count, and
  the iterator state resumes exactly. Unreadable images are counted and replaced as in
  `pipeline.ssl_dataset`. Returns (IterDataset, SkipCounter).
  """
  if global_batch % process_count:
    raise ValueError(f"Global batch {global_batch} does not split over {process_count} processes.")
  skipped = pipeline.SkipCounter()
  stream = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  epoch = len(source)

  def pair(index, rng):
    example, image = pipeline.readable_example(stream, index, epoch, skipped)
    if crop_scale is None:
      view = image_lib.resize_center_crop(image, image_size, image_size)
    else:
      view = np.asarray(augment.random_resized_crop(Image.fromarray(image), image_size,
                                                    tuple(crop_scale), rng))
    caption = example["captions"][int(rng.integers(len(example["captions"])))]
    return {"image": image_lib.normalize(view), "tokens": np.asarray(tokenize(caption), np.int32),
            "label": np.int32(example["label"])}

  ds = grain.MapDataset.range(pipeline.ENDLESS).seed(seed).random_map(pair)
  ds = ds.batch(global_batch // process_count)[process_index::process_count]
  return ds.to_iter_dataset(pipeline.read_options(num_threads)), skipped


def caption_eval_dataset(source, batch_size: int, image_size: int,
                         tokenize: Callable[[str], np.ndarray], process_index: int = 0,
                         process_count: int = 1):
  """One ordered pass of `pipeline.eval_dataset` batches with the tokens of each image's first
  caption added, for image↔text retrieval."""
  return pipeline.eval_dataset(
      source, batch_size, image_size, process_index, process_count,
      extra=lambda example: {"tokens": np.asarray(tokenize(example["captions"][0]), np.int32)})
