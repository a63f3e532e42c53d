"""Open-vocabulary segmentation with dino.txt (Jose et al., 2025, §4.3): the head's projected patch
tokens scored against the patch half of the class text embeddings, through the same model-agnostic
sliding-window core as Talk2DINO (`evaluators.open_vocab`).

  models = load_models(config, workdir)            # a trained dino.txt run
  labels, scores = segment(image, ["cat", "grass"], models)
"""

import dataclasses
import functools
import os
from typing import Any, Iterable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dinojax import backbones, checkpoint, parallel
from dinojax.data import images as image_lib
from dinojax.data.tokenizer import build_tokenizer
from dinojax.evaluators import open_vocab, zero_shot
from dinojax.models.dinotxt import build_towers, encode_image
from dinojax.ops.resize import bilinear_resize

DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclasses.dataclass
class DinoTxtModels:
  """A trained dino.txt model: the frozen backbone, the vision head, the text tower, their params
  (unboxed trees, not {"params": ...}), and the tokenizer (`data.tokenizer.Tokenizer`)."""
  backbone: Any
  backbone_params: Any
  head: Any
  head_params: Any
  text: Any
  text_params: Any
  tokenizer: Any


def class_embeddings(models: DinoTxtModels, classes: Sequence[str],
                     templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
  """(N, embed_dim / 2) unit class vectors in the patch space: the second half of each prompt's text
  embedding (the half trained against the mean of the patches), normalised, averaged over the
  templates and normalised again, as the official segmentation notebook does."""

  def encode(prompts):
    ids = models.tokenizer.encode(list(prompts))
    text = models.text.apply({"params": models.text_params}, jnp.asarray(ids))["text_embeds"]
    return np.asarray(text[:, text.shape[-1] // 2:])

  return zero_shot.class_embeddings(encode, list(classes), templates)


@functools.partial(jax.jit, static_argnames=("backbone", "head", "window"))
def _window_scores(backbone_params, head_params, text, crops, *, backbone, head, window):
  b, h, w, _ = crops.shape
  x = crops if (h, w) == (window, window) else bilinear_resize(crops, (window, window), (1, 2))
  x = image_lib.normalize_pixels(x)
  patches = encode_image(backbone, backbone_params, head, head_params, x)["patch_embeds"]
  grid = window // backbone.patch_size
  scores = open_vocab.cosine_scores(patches.reshape(b, grid, grid, -1), text)
  return open_vocab.upsample_scores(scores, (h, w), align_corners=False)


def window_scorer(models: DinoTxtModels, text: jax.Array,
                  window: int = open_vocab.WINDOW) -> open_vocab.WindowScorer:
  """(b, h, w, 3) RGB windows in [0, 255] -> (b, N, h, w) cosine scores of the projected patch tokens
  with the class vectors `text` (N, embed_dim / 2), bilinearly upsampled to the window."""
  if window % models.backbone.patch_size:
    raise ValueError(f"window={window} is not a multiple of the backbone's patch size "
                     f"{models.backbone.patch_size}.")
  return functools.partial(_window_scores, models.backbone_params, models.head_params, jnp.asarray(text),
                           backbone=models.backbone, head=models.head, window=window)


def segment_many(images: Iterable[np.ndarray | str], classes: Sequence[str], models: DinoTxtModels, *,
                 background_threshold: float | None = None, short_side: int = open_vocab.SHORT_SIDE,
                 window: int = open_vocab.WINDOW, stride: int = open_vocab.STRIDE, batch_size: int = 8,
                 templates: Sequence[str] = DEFAULT_TEMPLATES) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(labels (H, W), scores (N, H, W)) for each image, by sliding-window inference."""
  scorer = window_scorer(models, class_embeddings(models, classes, templates), window)
  rgb = (image_lib.load_image(x) if isinstance(x, str) else image_lib.to_rgb(np.asarray(x)) for x in images)
  for scores in open_vocab.sliding_window_scores(rgb, scorer, short_side=short_side, window=window,
                                                 stride=stride, batch_size=batch_size):
    yield open_vocab.scores_to_labels(scores, background_threshold), np.asarray(scores)


def segment(image: np.ndarray | str, classes: Sequence[str], models: DinoTxtModels,
            **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """Per-pixel labels (H, W) indexing `classes` (-1 below `background_threshold`) and per-class score
  maps (N, H, W) at the image's size; keyword arguments as `segment_many`."""
  return next(segment_many([image], classes, models, batch_size=1, **kwargs))


def check_saved_params(saved: dict, module, *inputs, name: str) -> None:
  """Raises unless a checkpoint's params for `module` are exactly the ones it builds (flax would ignore
  extra ones silently): e.g. the q/k/v biases of runs from before the official architecture was the
  default."""

  def paths(tree):
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(tree))[0]
    return {"/".join(k.key for k in path) for path, _ in flat}

  expected = paths(jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs)["params"]))
  extra, missing = sorted(paths(saved) - expected), sorted(expected - paths(saved))
  if extra or missing:
    raise ValueError(f"The checkpoint's {name} does not match the config's: it has {extra[:4]} "
                     f"the model lacks, and lacks {missing[:4]}. A run trained with q/k/v biases in the "
                     "head and text blocks (LayerNorm eps 1e-6 in the head) needs --config.vision.qkv_bias"
                     "=True --config.vision.norm_eps=1e-6 --config.text.qkv_bias=True.")


def load_models(config, workdir: str) -> DinoTxtModels:
  """The latest checkpoint of a dino.txt run (its config and workdir), on the default devices; the
  frozen backbone and the tokenizer are re-read from the sources the run used."""
  mesh = parallel.make_mesh({"data": 1, "fsdp": -1, "model": 1})
  rules = tuple(tuple(r) for r in config.sharding_rules)
  tokenizer = build_tokenizer(config, workdir, train_source=None)
  backbone = backbones.build_backbone(config)
  head, text = build_towers(config, backbone, tokenizer)
  backbone_params, _ = backbones.init_backbone(config, backbone, mesh, rules)
  directory = os.path.join(workdir, "checkpoints")
  mgr = checkpoint.manager(directory, None)
  step = checkpoint.latest_step(mgr)
  if step is None:
    raise FileNotFoundError(f"No dino.txt checkpoint in {directory}.")
  # Restore onto this process's devices whatever mesh the run was saved from, replicated here.
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = checkpoint.restore(mgr, checkpoint.saved_like(mgr, step, replicated), step)["params"]
  check_saved_params(params["vision_head"], head, jnp.zeros((1, 2, backbone.embed_dim)), 1,
                     name="vision head")
  check_saved_params(params["text"], text, jnp.zeros((1, config.text.context_length), jnp.int32),
                     name="text tower")
  return DinoTxtModels(backbone, params.get("backbone", backbone_params), head,
                       params["vision_head"], text, params["text"], tokenizer)
