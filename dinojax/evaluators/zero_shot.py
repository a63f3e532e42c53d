"""Zero-shot classification and image↔text retrieval for image–text models (CLIP, Radford et al.,
2021, §3.1.4; dino.txt, Jose et al., 2025, §4): class embeddings from prompt templates, cosine top-k
accuracy, and recall@k in both directions; `ZeroShot` and `Retrieval`, the evaluations of the
`evaluators.base` protocol that dino.txt runs, embed their data with the model's functions.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dinojax import features
from dinojax.data import captions, pipeline, sources

# CLIP's seven-template ImageNet ensemble (the subset its authors recommend, `Prompt_Engineering_for_
# ImageNet.ipynb`), used where a config names no templates of its own.
CLIP_TEMPLATES = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                  "a {} in a video game.", "art of the {}.", "a photo of the small {}.")
# CLIP's full 80-template ImageNet ensemble (same notebook), the one the official dino.txt zero-shot
# evaluation uses with `data.imagenet_classes.CLIP_CLASS_NAMES`.
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.",
    "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
    "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.")


def _normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_embeddings(encode_texts: Callable[[Sequence[str]], np.ndarray], class_names: Sequence[str],
                     templates: Sequence[str]) -> np.ndarray:
  """(classes, E) unit vectors: each class's prompts embedded, normalised, averaged over the
  templates and normalised again (CLIP's prompt ensembling). `encode_texts(list of str) -> (n, E)`."""
  if not class_names:
    raise ValueError("Zero-shot classification needs at least one class name; got none.")
  if not templates or any("{}" not in t for t in templates):
    raise ValueError(f"Prompt templates must be non-empty and each contain '{{}}'; got {templates!r}.")
  prompts = [t.format(c) for c in class_names for t in templates]
  embeds = _normalize(encode_texts(prompts)).reshape(len(class_names), len(templates), -1)
  return _normalize(embeds.mean(axis=1))


@jax.jit
def _rank_of_label(image_embeds, class_embeds, labels):
  scores = image_embeds @ class_embeds.T
  true = jnp.take_along_axis(scores, labels[:, None], axis=1)
  # Ties go to the lower class index (a stable sort's order): collapsed embeddings score chance.
  earlier = jnp.arange(scores.shape[1])[None, :] < labels[:, None]
  return ((scores > true) | ((scores == true) & earlier)).sum(axis=1)


def zero_shot_accuracy(image_embeds: np.ndarray, labels: np.ndarray, class_embeds: np.ndarray,
                       ks: Sequence[int] = (1, 5), chunk: int = 4096) -> dict[str, float]:
  """{"top1": …, "top5": …}: the fraction of images whose label is among the k classes of highest
  cosine similarity (k capped at the number of classes)."""
  image_embeds, class_embeds = _normalize(image_embeds), _normalize(class_embeds)
  labels = np.asarray(labels, np.int32)
  if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(class_embeds):
    raise ValueError(f"Labels must lie in [0, {len(class_embeds)}) to be scored against "
                     f"{len(class_embeds)} classes.")
  ranks = np.concatenate([np.asarray(_rank_of_label(image_embeds[s:s + chunk], class_embeds,
                                                    labels[s:s + chunk]))
                          for s in range(0, len(labels), chunk)])
  return {f"top{k}": float((ranks < min(k, len(class_embeds))).mean()) for k in ks}


@jax.jit
def _best_positive_rank(query, keys, positive):
  """For each query, the rank of its best positive key: how many keys score above it, ties going to
  the lower key index (a stable sort's order), so collapsed embeddings score chance."""
  scores = query @ keys.T
  masked = jnp.where(positive, scores, -jnp.inf)
  best = jnp.max(masked, axis=1, keepdims=True)
  first = jnp.argmax(masked == best, axis=1)[:, None]  # the lowest-index positive holding the best
  earlier = jnp.arange(keys.shape[0])[None, :] < first
  return ((scores > best) | ((scores == best) & earlier)).sum(axis=1)


def retrieval_recall(image_embeds: np.ndarray, text_embeds: np.ndarray,
                     text_to_image: np.ndarray | None = None, ks: Sequence[int] = (1, 5, 10),
                     chunk: int = 1024) -> dict[str, float]:
  """Recall@k of image→text and text→image retrieval by cosine similarity.

  `text_to_image[t]` is the image text t describes (default: text i describes image i). An image
  query succeeds at k if any of its texts is among the k nearest texts; a text query if its image
  is among the k nearest images.
  """
  image_embeds, text_embeds = _normalize(image_embeds), _normalize(text_embeds)
  owner = (np.arange(len(text_embeds)) if text_to_image is None else np.asarray(text_to_image))
  if len(owner) != len(text_embeds) or owner.min() < 0 or owner.max() >= len(image_embeds):
    raise ValueError("text_to_image must give, for every text, the index of an image.")
  if len(set(owner.tolist())) != len(image_embeds):
    raise ValueError("Every image needs at least one text for image→text retrieval.")
  i2t = np.concatenate([np.asarray(_best_positive_rank(
      image_embeds[s:s + chunk], text_embeds, owner[None, :] == np.arange(s, min(s + chunk, len(image_embeds)))[:, None]))
      for s in range(0, len(image_embeds), chunk)])
  t2i = np.concatenate([np.asarray(_best_positive_rank(
      text_embeds[s:s + chunk], image_embeds, owner[s:s + chunk, None] == np.arange(len(image_embeds))[None, :]))
      for s in range(0, len(text_embeds), chunk)])
  out = {}
  for k in ks:
    out[f"image_to_text_r{k}"] = float((i2t < k).mean())
    out[f"text_to_image_r{k}"] = float((t2i < k).mean())
  return out


def encode_prompts(embed_texts: Callable, params, tokenizer, prompts: Sequence[str], mesh,
                   rules) -> np.ndarray:
  """(n, E) float32 embeddings of `prompts`, `embed_texts(params, token_ids)` run on the mesh, every
  host ending with all of them."""
  ids = features.global_rows(tokenizer.encode(list(prompts)), mesh, rules)
  return features.gather_rows(embed_texts(params, ids), len(prompts)).astype(np.float32)


class ZeroShot:
  """`zero_shot(params) -> {"zero_shot_top1", "zero_shot_top5"}` of an image–text model on `source`'s
  `split` (`sources.make_source`; empty: no evaluation, {}): the images embedded by
  `embed_images(params, images)` in global batches of `batch_size` at `image_size`, the classes by
  their names (`class_names`, or the source's) in `templates` through `embed_texts(params, ids)`."""

  def __init__(self, *, source: str, split: str, class_names: Sequence[str], templates: Sequence[str],
               batch_size: int, image_size: int, tokenizer, embed_images: Callable,
               embed_texts: Callable, mesh, rules):
    self.source, self.split = source, split
    self.class_names, self.templates = tuple(class_names), tuple(templates)
    self.per_host, self.image_size, self.tokenizer = batch_size // jax.process_count(), image_size, tokenizer
    self.embed_images, self.embed_texts, self.mesh, self.rules = embed_images, embed_texts, mesh, rules

  def __call__(self, params) -> dict:
    if not self.source:
      return {}
    source = sources.make_source(self.source, self.split)
    names = self.class_names or tuple(getattr(source, "class_names", ()))
    if not names:
      raise ValueError(f"eval.zero_shot needs class names: set eval.zero_shot.class_names for "
                       f"{self.source!r}.")
    classes = class_embeddings(
        lambda prompts: encode_prompts(self.embed_texts, params, self.tokenizer, prompts, self.mesh,
                                       self.rules), names, self.templates)
    batches = pipeline.eval_dataset(source, self.per_host, self.image_size, jax.process_index(),
                                    jax.process_count())
    embedded = features.embed_dataset(
        batches, lambda batch: {"image": self.embed_images(params, batch["image"])}, self.mesh, self.rules)
    return {f"zero_shot_{k}": v
            for k, v in zero_shot_accuracy(embedded["image"], embedded["label"], classes).items()}


class Retrieval:
  """`retrieval(params) -> {"image_to_text_r1", ..., "text_to_image_r10"}` of an image–text model on
  the first caption of each image of caption source `source`'s `split`
  (`captions.make_caption_source`; empty: no evaluation, {}), embedded by `embed_images(params,
  images)` and `embed_texts(params, ids)` in global batches of `batch_size` at `image_size`."""

  def __init__(self, *, source: str, split: str, batch_size: int, image_size: int, tokenizer,
               embed_images: Callable, embed_texts: Callable, mesh, rules):
    self.source, self.split = source, split
    self.per_host, self.image_size = batch_size // jax.process_count(), image_size
    self.tokenizer, self.embed_images, self.embed_texts = tokenizer, embed_images, embed_texts
    self.mesh, self.rules = mesh, rules

  def __call__(self, params) -> dict:
    if not self.source:
      return {}
    source = captions.make_caption_source(self.source, self.split)
    batches = captions.caption_eval_dataset(source, self.per_host, self.image_size, self.tokenizer,
                                            jax.process_index(), jax.process_count())
    embedded = features.embed_dataset(
        batches, lambda batch: {"image": self.embed_images(params, batch["image"]),
                                "text": self.embed_texts(params, batch["tokens"])}, self.mesh, self.rules)
    return retrieval_recall(embedded["image"], embedded["text"])
