"""Open-vocabulary segmentation with Talk2DINO: DINOv2 patches scored against ψ(CLIP text) per class.

  labels, scores = segment(image, ["cat", "grass"], models=...)   # library
"""

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dinojax.data import images as image_lib
from dinojax.data.clip_tokenizer import tokenize
from dinojax.models import talk2dino
from dinojax.ops.resize import torch_bilinear_resize

DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclasses.dataclass
class Talk2DINOModels:
  """The three frozen pieces and their params: a DINOv2 backbone, a CLIP text tower, ψ."""
  backbone: Any
  backbone_params: Any
  text_encoder: Any
  text_params: Any
  projection: Any
  projection_params: Any


def class_embeddings(models: Talk2DINOModels, classes: Sequence[str],
                     templates: Sequence[str] = DEFAULT_TEMPLATES) -> jax.Array:
  """(N, D) unit vectors in DINOv2 space: CLIP text embeddings averaged over templates, then ψ."""
  if not classes:
    raise ValueError("segment needs at least one class name; got an empty list.")
  prompts = [t.format(c) for c in classes for t in templates]
  ids = tokenize(prompts, models.text_encoder.context_length)
  text = models.text_encoder.apply(models.text_params, ids)["text_embeds"]
  text = text.reshape(len(classes), len(templates), -1).mean(axis=1)
  projected = models.projection.apply(models.projection_params, text)
  return projected / jnp.linalg.norm(projected, axis=-1, keepdims=True)


def segment(image: np.ndarray | str, classes: Sequence[str], models: Talk2DINOModels, *,
            background_threshold: float | None = None, background_cleaning: bool = True,
            lambda_bg: float = 0.2, short_side: int = 448,
            templates: Sequence[str] = DEFAULT_TEMPLATES) -> tuple[np.ndarray, np.ndarray]:
  """Per-pixel labels (H, W) and per-class score maps (N, H, W) at the input image's size.

  Labels index `classes`; with `background_threshold`, pixels whose best score is below it get -1.
  The image (a path or an H×W×{1,3,4} array) is resized so its short side is about `short_side`
  (patch multiples), scored per patch, and the scores are bilinearly upsampled back.
  """
  rgb = image_lib.load_image(image) if isinstance(image, str) else image_lib.to_rgb(np.asarray(image))
  text = class_embeddings(models, classes, templates)
  backbone = models.backbone
  resized = image_lib.resize_to_patch_multiple(rgb.astype(np.uint8), short_side, backbone.patch_size)
  out = backbone.apply(models.backbone_params, jnp.asarray(image_lib.normalize(resized))[None],
                       return_attention=True)
  h, w = resized.shape[0] // backbone.patch_size, resized.shape[1] // backbone.patch_size
  patches = out["x_norm_patchtokens"].reshape(1, h, w, -1)
  scores = talk2dino.patch_scores(patches, text)
  if background_cleaning:
    cls_logits = out["attention_logits"][:, :, 0, 1 + backbone.num_register_tokens:]
    scores = talk2dino.background_cleaning(scores, patches, cls_logits, text, lambda_bg)
  scores = torch_bilinear_resize(scores[0].transpose(1, 2, 0), rgb.shape[:2], align_corners=True)
  scores = np.asarray(scores.transpose(2, 0, 1))
  labels = scores.argmax(axis=0)
  if background_threshold is not None:
    labels = np.where(scores.max(axis=0) < background_threshold, -1, labels)
  return labels, scores


# ---------------------------------------------------------------------------------------------------
# Command line: python -m dinojax.segment --image X --classes "a,b,c" --out mask.png
# ---------------------------------------------------------------------------------------------------
def load_models(backbone: str = "vitb14_reg", backbone_checkpoint: str | None = None,
                clip_checkpoint: str | None = None, projection: str | None = None,
                projection_config: str | None = None, seed: int = 0) -> Talk2DINOModels:
  """The paper's pairing (DINOv2 ViT-B/14-reg, CLIP ViT-B/16 text, ψ). Any piece without a file is
  randomly initialised, for trying the pipeline offline; say so to whoever reads the output."""
  import flax.linen as nn
  from dinojax import convert, hub
  from dinojax.models.clip_text import VARIANTS, CLIPTextEncoder
  vit, vit_params = hub.dinov2(backbone, checkpoint=backbone_checkpoint, seed=seed)
  key = jax.random.key(seed)
  if clip_checkpoint:
    text, text_params = convert.clip_text_from_state_dict(convert.load_state_dict(clip_checkpoint))
  else:
    text = CLIPTextEncoder(**VARIANTS["ViT-B/16"])
    text_params = jax.jit(lambda k: nn.unbox(text.init(k, jnp.zeros((1, 77), jnp.int32))))(key)
  if projection:
    proj, proj_params = convert.talk2dino_from_checkpoint(projection, projection_config)
  else:
    proj = talk2dino.TextToPatchProjection(dino_dim=vit.embed_dim)
    proj_params = nn.unbox(proj.init(key, jnp.zeros((1, text.embed_dim))))
  if proj.dino_dim != vit.embed_dim:
    raise ValueError(f"The projection maps into {proj.dino_dim} dims but {backbone} is {vit.embed_dim} wide.")
  return Talk2DINOModels(vit, vit_params, text, text_params, proj, proj_params)


def colour_mask(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """An RGB picture of the labels (background, -1, black)."""
  palette = (np.random.default_rng(0).random((num_classes, 3)) * 200 + 55).astype(np.uint8)
  return np.where(labels[..., None] >= 0, palette[np.maximum(labels, 0)], 0).astype(np.uint8)


def main(argv=None):
  import argparse
  from PIL import Image
  parser = argparse.ArgumentParser(description="Talk2DINO open-vocabulary segmentation of one image.")
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
  args = parser.parse_args(argv)
  classes = [c.strip() for c in args.classes.split(",") if c.strip()]
  if not classes:
    parser.error("--classes names no class")
  missing = [n for n in ("backbone_checkpoint", "clip_checkpoint", "projection") if not getattr(args, n)]
  if missing:
    print(f"warning: no {', '.join(missing)} given: those parts are randomly initialised, so the mask "
          "shows the pipeline, not real segmentation.")
  models = load_models(args.backbone, args.backbone_checkpoint, args.clip_checkpoint, args.projection,
                       args.projection_config)
  labels, _ = segment(args.image, classes, models, background_threshold=args.background_threshold,
                      short_side=args.short_side)
  Image.fromarray(colour_mask(labels, len(classes))).save(args.out)
  counts = {c: int((labels == i).sum()) for i, c in enumerate(classes)}
  print(f"wrote {args.out} ({labels.shape[1]}x{labels.shape[0]}); pixels per class: {counts}")


if __name__ == "__main__":
  main()
