"""What a training run's features look like, drawn at each evaluation on a few fixed images: the PCA
of the patch features (the DINOv2 paper's Fig. 1, `pca.pca_rgb`) and the last block's CLS attention
of each head (the DINO paper's attention maps). The loop writes them as TensorBoard images and PNGs
(`loop.MetricWriter.images`)."""

import jax
import numpy as np

from dinojax import features
from dinojax.data import images as image_lib
from dinojax.data import pipeline, sources
from dinojax.evaluators import pca
from dinojax.models.dinotxt import VisionHead, backbone_tokens
from dinojax.models.vit import ViT


def fixed_images(source_spec: str, split: str, size: int, count: int = 4) -> np.ndarray:
  """The first `count` images of a source, as the evaluations crop them: (count, size, size, 3) uint8."""
  source = sources.make_source(source_spec, split)
  return np.stack([pipeline.eval_crop(pipeline.decode_image(source[i]["image"]), size)
                   for i in range(min(count, len(source)))])


def _heat(x: np.ndarray) -> np.ndarray:
  """(h, w) -> (h, w, 3) grey levels in [0, 1], min to max."""
  lo, hi = x.min(), x.max()
  return np.repeat(((x - lo) / (hi - lo if hi > lo else 1.0))[..., None], 3, axis=-1)


def _upsample(colours: np.ndarray, size: int) -> np.ndarray:
  """(h, w, 3) in [0, 1] -> (size, size, 3) uint8, each patch a block of pixels."""
  pixels = (colours * 255).round().astype(np.uint8)
  return pixels.repeat(size // pixels.shape[0], axis=0).repeat(size // pixels.shape[1], axis=1)


class Pictures:
  """`pictures(params) -> {"pca", "cls_attention"}`: one row per fixed image (uint8 RGB), the image
  then its patch PCA, and the image then each head's CLS attention over the patches. The images are
  the first `count` of `source`'s `heldout_split` at `image_size`, read on first use.

  `params` are the backbone's. With a `vision_head` (dino.txt, whose backbone is usually frozen), they
  are dino.txt's {"backbone", "vision_head", ...} and the pictures are of what it trains: the head's
  projected patch tokens and its last block's CLS attention; an unfrozen backbone (`backbone_frozen`
  False) adds its own as "backbone_pca" and "backbone_cls_attention"."""

  def __init__(self, *, source: str, heldout_split: str, backbone: ViT, image_size: int, mesh, rules,
               count: int = 4, vision_head: VisionHead | None = None, backbone_frozen: bool = True):
    self.source, self.split, self.image_size, self.count = source, heldout_split, image_size, count
    self.mesh, self.rules = mesh, rules
    self.backbone, self.vision_head = backbone, vision_head
    self.draws_backbone = vision_head is None or not backbone_frozen
    self.forward = jax.jit(self._features)
    self.grid = image_size // backbone.patch_size
    self.num_prefix_tokens = 1 + backbone.num_register_tokens
    self.images = self.batch = None

  def _features(self, params, images) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Picture name prefix -> (patch tokens (B, N, D), CLS attention logits (B, heads, T))."""
    backbone_params = params if self.vision_head is None else params["backbone"]
    out = self.backbone.apply({"params": backbone_params}, images,
                              return_cls_attention=self.draws_backbone)
    drawn = {}
    if self.draws_backbone:
      prefix = "" if self.vision_head is None else "backbone_"
      drawn[prefix] = (out["x_norm_patchtokens"], out["cls_attention_logits"])
    if self.vision_head is not None:
      head = self.vision_head.apply({"params": params["vision_head"]}, backbone_tokens(out),
                                    self.num_prefix_tokens, return_cls_attention=True)
      drawn[""] = (head["patch_embeds"], head["cls_attention_logits"])
    return drawn

  def _read(self):
    self.images = fixed_images(self.source, self.split, self.image_size, self.count)
    self.batch = features.global_rows(image_lib.normalize(self.images), self.mesh, self.rules)

  def _draw(self, patches: jax.Array, logits: jax.Array) -> dict[str, np.ndarray]:
    """`_features`' outputs -> {"pca", "cls_attention"} pictures of the fixed images."""
    gather = lambda x: features.gather_rows(x, len(self.images))
    patches = gather(patches).reshape(len(self.images), self.grid, self.grid, -1)
    # The CLS query's softmax over every token, then its weights on the patches alone.
    attention = jax.nn.softmax(logits, axis=-1)[:, :, self.num_prefix_tokens:]
    attention = gather(attention).reshape(len(self.images), -1, self.grid, self.grid)
    size = self.images.shape[1]
    pca_rows = [np.concatenate([image, _upsample(pca.pca_rgb(p), size)], axis=1)
                for image, p in zip(self.images, patches)]
    attention_rows = [np.concatenate([image, *(_upsample(_heat(head), size) for head in heads)], axis=1)
                      for image, heads in zip(self.images, attention)]
    scale = max(1, 128 // size)  # rows of at least 128 px: tiny images stay visible
    return {name: np.concatenate(rows).repeat(scale, axis=0).repeat(scale, axis=1)
            for name, rows in (("pca", pca_rows), ("cls_attention", attention_rows))}

  def __call__(self, params) -> dict[str, np.ndarray]:
    if self.images is None:
      self._read()
    drawn = self.forward(params, self.batch)
    return {prefix + name: picture for prefix, (patches, logits) in drawn.items()
            for name, picture in self._draw(patches, logits).items()}
