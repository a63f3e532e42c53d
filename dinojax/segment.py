"""Open-vocabulary segmentation with Talk2DINO, from Python or the command line.

  labels, scores = segment(image, ["cat", "grass"], models=load_models(...))   # library
  python -m dinojax.segment --image X --classes "a,b,c" --out mask.png           # one image

The library lives in `dinojax.evaluators.talk2dino` (Talk2DINO's scorer) on top of the model-agnostic
sliding-window core `dinojax.evaluators.open_vocab`, its models load with `dinojax.hub.talk2dino`
(`load_models` here); dataset mIoU is the `talk2dino_eval` job (`configs/talk2dino_eval.py`).
"""

import argparse
import os

import numpy as np
from PIL import Image

from dinojax.data.images import load_image
from dinojax.evaluators.talk2dino import (DEFAULT_TEMPLATES, TEMPLATES, class_embeddings,  # noqa: F401
                                          segment, segment_many)
from dinojax.hub import Talk2DINOModels, talk2dino as load_models  # noqa: F401


def colour_mask(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """An RGB picture of the labels (background, -1, black)."""
  palette = (np.random.default_rng(0).random((num_classes, 3)) * 200 + 55).astype(np.uint8)
  return np.where(labels[..., None] >= 0, palette[np.maximum(labels, 0)], 0).astype(np.uint8)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m dinojax.segment",
                                   description="Talk2DINO open-vocabulary segmentation of one image.")
  parser.add_argument("--image", required=True, help="image file, or a scikit-image sample name")
  parser.add_argument("--classes", required=True, help='comma-separated class names, e.g. "cat,grass"')
  parser.add_argument("--out", required=True, help="where to write the coloured mask (PNG)")
  parser.add_argument("--backbone", default="vitb14_reg")
  parser.add_argument("--backbone_checkpoint")
  parser.add_argument("--clip_checkpoint", help="Hugging Face CLIP .safetensors/.bin (text tower used)")
  parser.add_argument("--projection", help="Talk2DINO .pth (e.g. vitb_mlp_infonce.pth)")
  parser.add_argument("--projection_config", help="its .yaml")
  parser.add_argument("--background_threshold", type=float)
  parser.add_argument("--short_side", type=int, default=448)
  parser.add_argument("--window", type=int, default=448, help="sliding-window size (px)")
  parser.add_argument("--stride", type=int, default=224, help="sliding-window stride (px)")
  parser.add_argument("--pamr", action="store_true", help="refine the masks with PAMR")
  parser.add_argument("--templates", default="simple", choices=sorted(TEMPLATES), help="prompt set")
  args = parser.parse_args(argv)
  classes = [c.strip() for c in args.classes.split(",") if c.strip()]
  if not classes:
    parser.error("--classes names no class")
  # Every path before the models load, so a wrong one fails at once.
  paths = {n: getattr(args, n) for n in ("backbone_checkpoint", "clip_checkpoint", "projection",
                                          "projection_config")}
  missing = [f"--{n} {path}" for n, path in paths.items() if path and not os.path.isfile(path)]
  if missing:
    parser.error(f"no such file: {', '.join(missing)}")
  try:
    image = load_image(args.image)
  except (FileNotFoundError, ValueError) as e:
    parser.error(f"--image: {e}")
  missing = [n for n in ("backbone_checkpoint", "clip_checkpoint", "projection") if not getattr(args, n)]
  if missing:
    print(f"warning: no {', '.join(missing)} given: those parts are randomly initialised, so the mask "
          "shows the pipeline, not real segmentation.")
  models = load_models(args.backbone, args.backbone_checkpoint, args.clip_checkpoint, args.projection,
                       args.projection_config)
  labels, _ = segment(image, classes, models, background_threshold=args.background_threshold,
                      short_side=args.short_side, window=args.window, stride=args.stride,
                      pamr=args.pamr, templates=args.templates)
  Image.fromarray(colour_mask(labels, len(classes))).save(args.out)
  counts = {c: int((labels == i).sum()) for i, c in enumerate(classes)}
  print(f"wrote {args.out} ({labels.shape[1]}x{labels.shape[0]}); pixels per class: {counts}")


if __name__ == "__main__":
  main()
