"""Talk2DINO open-vocabulary segmentation (Barsellotti et al., "Talking to DINO", 2025, §3.3): each
class name goes through CLIP's text tower and ψ into DINOv2's patch space; every window of the image
gets sigmoid(cosine) masks per class, the paper's background cleaning and, optionally, PAMR; the
windows are combined by the model-agnostic sliding-window core of `open_vocab`.

  models = hub.talk2dino(...)
  labels, scores = segment(image, ["cat", "grass"], models)
"""

import functools
from typing import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dinojax.data import images as image_lib
from dinojax.hub import Talk2DINOModels
from dinojax.data.clip_tokenizer import tokenize
from dinojax.evaluators import open_vocab
from dinojax.models import talk2dino
from dinojax.ops.pamr import TALK2DINO_DILATIONS, TALK2DINO_ITERATIONS, pamr as refine
from dinojax.ops.resize import bilinear_resize

# Prompt sets: the single default, and the seven ImageNet templates of Talk2DINO's evaluation configs
# (`template: sub_imagenet_template`, a subset of CLIP's 80 ImageNet prompts).
TEMPLATES = {
    "simple": ("a photo of a {}.",),
    "sub_imagenet": ("itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.",
                     "a {} in a video game.", "art of the {}.", "a photo of the small {}."),
}
DEFAULT_TEMPLATES = TEMPLATES["simple"]
_TEXT_CHUNK = 256  # prompts per text-tower call


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
  """A prompt-set name from `TEMPLATES` or the templates themselves, each with one "{}"."""
  if isinstance(templates, str):
    if templates not in TEMPLATES:
      raise ValueError(f"Unknown prompt templates {templates!r}; choose one of {sorted(TEMPLATES)} "
                       "or pass a list of templates.")
    return TEMPLATES[templates]
  templates = tuple(templates)
  if not templates or any(t.count("{}") != 1 for t in templates):
    raise ValueError(f"Templates must be a non-empty list with one '{{}}' each, got {templates!r}.")
  return templates


@functools.partial(jax.jit, static_argnums=0)
def _encode_text(text_encoder, params, ids):
  return text_encoder.apply(params, ids)["text_embeds"]


def class_embeddings(models: Talk2DINOModels, classes: Sequence[str],
                     templates: str | Sequence[str] = DEFAULT_TEMPLATES) -> jax.Array:
  """(N, D) unit vectors in DINOv2 space: CLIP text embeddings averaged over the templates, then ψ
  (the official `build_text_embedding`)."""
  if not classes:
    raise ValueError("segment needs at least one class name; got an empty list.")
  templates = resolve_templates(templates)
  prompts = [t.format(c) for c in classes for t in templates]
  ids = tokenize(prompts, models.text_encoder.context_length)
  chunk = min(_TEXT_CHUNK, len(ids))
  padded = np.concatenate([ids, np.zeros((-len(ids) % chunk, ids.shape[1]), ids.dtype)])
  text = jnp.concatenate([_encode_text(models.text_encoder, models.text_params, padded[i:i + chunk])
                          for i in range(0, len(padded), chunk)])[:len(ids)]
  text = text.reshape(len(classes), len(templates), -1).mean(axis=1)
  projected = models.projection.apply(models.projection_params, text)
  return projected / jnp.linalg.norm(projected, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("backbone", "window", "background_cleaning", "lambda_bg",
                                             "pamr_iterations", "pamr_dilations"))
def _window_masks(backbone_params, text, crops, *, backbone, window, background_cleaning, lambda_bg,
                  pamr_iterations, pamr_dilations):
  b, h, w, _ = crops.shape
  x = crops if (h, w) == (window, window) else bilinear_resize(crops, (window, window), (1, 2))
  x = image_lib.normalize_pixels(x)
  out = backbone.apply(backbone_params, x, return_cls_attention=background_cleaning)
  # A fence between the backbone and the masks: optimised across it, XLA's CPU made this function
  # slower than the backbone and the masks apart (docs/benchmarks.md).
  tokens, cls_logits = jax.lax.optimization_barrier(
      (out["x_norm_patchtokens"], out.get("cls_attention_logits")))
  grid = window // backbone.patch_size
  patches = tokens.reshape(b, grid, grid, -1)
  masks = talk2dino.patch_scores(patches, text)
  if background_cleaning:
    cls_logits = cls_logits[:, :, 1 + backbone.num_register_tokens:]
    masks = talk2dino.background_cleaning(masks, patches, cls_logits, text, lambda_bg)
  masks = open_vocab.upsample_scores(masks, (h, w), align_corners=True)
  if pamr_iterations:
    masks = refine(crops, masks, pamr_iterations, pamr_dilations)
  return masks


def window_scorer(models: Talk2DINOModels, text: jax.Array, window: int = open_vocab.WINDOW, *,
                  background_cleaning: bool = True, lambda_bg: float = 0.2, pamr: bool = False,
                  pamr_iterations: int = TALK2DINO_ITERATIONS,
                  pamr_dilations: Sequence[int] = TALK2DINO_DILATIONS) -> open_vocab.WindowScorer:
  """Talk2DINO's `generate_masks` as an `open_vocab.WindowScorer`: (b, h, w, 3) RGB windows in
  [0, 255] -> (b, N, h, w) soft masks. Each window is resized to window×window (the official
  `resize_dim`), ImageNet-normalised and run through the backbone; masks are sigmoid(cosine) of
  patches and class embeddings `text` (N, D), background-cleaned with the last block's CLS
  attention, bilinearly upsampled (corners aligned) to the window and, with `pamr`, refined on its
  pixels. Compiled once per backbone, settings and window shape."""
  patch = models.backbone.patch_size
  if window % patch:
    raise ValueError(f"window={window} is not a multiple of the backbone's patch size {patch}.")
  return functools.partial(_window_masks, models.backbone_params, text, backbone=models.backbone,
                           window=window, background_cleaning=background_cleaning,
                           lambda_bg=float(lambda_bg), pamr_iterations=pamr_iterations if pamr else 0,
                           pamr_dilations=tuple(pamr_dilations))


def segment_many(images: Iterable[np.ndarray | str], classes: Sequence[str], models: Talk2DINOModels, *,
                 background_threshold: float | None = None, background_cleaning: bool = True,
                 lambda_bg: float = 0.2, pamr: bool = False,
                 short_side: int = open_vocab.SHORT_SIDE, window: int = open_vocab.WINDOW,
                 stride: int = open_vocab.STRIDE, batch_size: int = 8,
                 templates: str | Sequence[str] = DEFAULT_TEMPLATES,
                 sharding: jax.sharding.Sharding | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """`segment` for a stream of images, their windows batched together; yields (labels, scores)."""
  text = class_embeddings(models, classes, templates)
  scorer = window_scorer(models, text, window, background_cleaning=background_cleaning,
                         lambda_bg=lambda_bg, pamr=pamr)
  rgb = (image_lib.load_image(x) if isinstance(x, str) else image_lib.to_rgb(np.asarray(x)) for x in images)
  for scores in open_vocab.sliding_window_scores(rgb, scorer, short_side=short_side, window=window,
                                                 stride=stride, batch_size=batch_size, sharding=sharding):
    yield open_vocab.scores_to_labels(scores, background_threshold), np.asarray(scores)


def segment(image: np.ndarray | str, classes: Sequence[str], models: Talk2DINOModels, *,
            background_threshold: float | None = None, background_cleaning: bool = True,
            lambda_bg: float = 0.2, pamr: bool = False, short_side: int = open_vocab.SHORT_SIDE,
            window: int = open_vocab.WINDOW, stride: int = open_vocab.STRIDE,
            templates: str | Sequence[str] = DEFAULT_TEMPLATES) -> tuple[np.ndarray, np.ndarray]:
  """Per-pixel labels (H, W) and per-class score maps (N, H, W) at the input image's size.

  Labels index `classes`; with `background_threshold` (the paper uses 0.4–0.55), pixels whose best
  score does not exceed it get -1. The image (a path or an H×W×{1,3,4} array) is resized so its short
  side is `short_side`, scored in window×window windows every `stride` pixels (the paper: 448, 448,
  224), and the averaged scores are resized back.
  """
  return next(segment_many([image], classes, models, background_threshold=background_threshold,
                           background_cleaning=background_cleaning, lambda_bg=lambda_bg, pamr=pamr,
                           short_side=short_side, window=window, stride=stride, batch_size=1,
                           templates=templates))
