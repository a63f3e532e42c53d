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
