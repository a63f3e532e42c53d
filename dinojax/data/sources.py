"""Random-access image sources for grain: an image folder, TFDS, and an offline real set.

Every source yields {"image": uint8 H×W×3 or raw encoded bytes/path, "label": int}; decoding happens
in the pipeline so a corrupt file costs one skipped example, not the run.
"""

import importlib.util
import os

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class ImageFolder:
  """Every image file under `root` (any depth), sorted; the label is the index of its top-level
  sub-folder (0 for files directly under root)."""

  def __init__(self, root: str):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"Image folder not found: {root}")
    self.paths = sorted(
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files
        if f.lower().endswith(IMAGE_EXTENSIONS))
    if not self.paths:
      raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {root}.")
    classes = sorted({os.path.relpath(p, root).split(os.sep)[0] for p in self.paths
                      if os.sep in os.path.relpath(p, root)})
    index = {c: i for i, c in enumerate(classes)}
    self.labels = [index.get(os.path.relpath(p, root).split(os.sep)[0], 0) for p in self.paths]
    self.num_classes = max(len(classes), 1)

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    return {"image": self.paths[i], "label": self.labels[i]}


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images 1797×8×8 in 0..16, labels), as `sklearn.datasets.load_digits` gives them. Read straight
  from the CSV that ships inside scikit-learn: importing `sklearn.datasets` takes ~2 s, paid by every
  tiny job and test process; an install without the file falls back to the loader."""
  path = os.path.join(importlib.util.find_spec("sklearn").submodule_search_locations[0],
                      "datasets", "data", "digits.csv.gz")
  if not os.path.isfile(path):
    from sklearn.datasets import load_digits
    digits = load_digits()
    return digits.images, digits.target
  table = np.loadtxt(path, delimiter=",")
  return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


class Digits:
  """scikit-learn's handwritten digits (1,797 real 8×8 scans, 10 classes; ships with the package),
  upsampled to `size` px RGB: the offline set of the tiny configs. `split` is "train" (first 80 % of a
  fixed shuffle) or "heldout"."""

  num_classes = 10

  def __init__(self, split: str = "train", size: int = 32):
    from PIL import Image
    if split not in ("train", "heldout"):
      raise ValueError(f"Digits split must be 'train' or 'heldout', got {split!r}.")
    images, targets = _load_digits()
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(0.8 * len(order))
    order = order[:cut] if split == "train" else order[cut:]
    gray = (images[order] * (255 / 16)).astype(np.uint8)
    self.images = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BICUBIC))
                            for g in gray])[..., None].repeat(3, axis=-1)
    self.labels = targets[order].astype(np.int32)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": int(self.labels[i])}


class PathList:
  """Images listed in a text file, one path (absolute, or relative to the list's folder) a line; blank
  lines and `#` comments are skipped. Every label is 0. Paths are not opened here, so a missing or
  corrupt file surfaces when it is decoded (as one unreadable image, not a failed run)."""

  num_classes = 1

  def __init__(self, list_file: str):
    if not os.path.isfile(list_file):
      raise FileNotFoundError(f"Image list not found: {list_file}")
    root = os.path.dirname(os.path.abspath(list_file))
    with open(list_file) as f:
      lines = [line.strip() for line in f]
    self.paths = [os.path.join(root, line) for line in lines if line and not line.startswith("#")]
    if not self.paths:
      raise ValueError(f"No image paths in {list_file}.")
    self.labels = [0] * len(self.paths)

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    return {"image": self.paths[i], "label": 0}


class Tfds:
  """A prepared TFDS dataset (e.g. `imagenet2012`) read through its random-access data source.
  Needs the `tfds` extra and `tfds build` (or manual preparation) done beforehand."""

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    try:
      import tensorflow_datasets as tfds
    except ImportError as e:
      raise ImportError("TFDS sources need `pip install -e '.[tfds]'`.") from e
    self.source = tfds.data_source(name, split=split, data_dir=data_dir)
    self.num_classes = self.source.dataset_info.features["label"].num_classes

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    example = self.source[i]
    return {"image": example["image"], "label": int(example.get("label", 0))}


def make_source(name: str, split: str, **kwargs):
  """`digits`, `folder:<root>`, `list:<file of paths>` (split unused) or `tfds:<name>`."""
  if name == "digits":
    return Digits(split, **kwargs)
  if name.startswith("folder:"):
    return ImageFolder(os.path.join(name[len("folder:"):], split) if split else name[len("folder:"):])
  if name.startswith("list:"):
    return PathList(name[len("list:"):])
  if name.startswith("tfds:"):
    return Tfds(name[len("tfds:"):], split, **kwargs)
  raise ValueError(f"Unknown data source {name!r}; use 'digits', 'folder:<root>', 'list:<file>' or "
                   "'tfds:<name>'.")
