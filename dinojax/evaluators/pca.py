"""Patch-feature PCA, the DINOv2 paper's Fig. 1 visualisation, and the job that renders it.

The first principal component of the patch features separates foreground from background; a second
PCA on the foreground patches maps its three components to RGB.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from dinojax import hub, parallel
from dinojax.data import images as image_lib


def _principal_components(x: np.ndarray, k: int) -> np.ndarray:
  centred = x - x.mean(axis=0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  return centred @ vt[:k].T


def _minmax(x: np.ndarray) -> np.ndarray:
  lo, hi = x.min(axis=0), x.max(axis=0)
  return (x - lo) / np.where(hi > lo, hi - lo, 1.0)


def pca_rgb(patch_tokens: np.ndarray, foreground_threshold: float | None = None) -> np.ndarray:
  """(h, w, D) patch features -> (h, w, 3) colours in [0, 1].

  With `foreground_threshold`, patches whose first component (min-max scaled to [0, 1]) is at or
  below it are background (black) and the colour PCA runs on the rest, as in the paper's figure.
  """
  h, w, d = patch_tokens.shape
  x = np.asarray(patch_tokens, np.float64).reshape(h * w, d)
  foreground = np.ones(h * w, bool)
  if foreground_threshold is not None:
    foreground = _minmax(_principal_components(x, 1))[:, 0] > foreground_threshold
    if foreground.sum() < 3:
      raise ValueError(f"foreground_threshold={foreground_threshold} leaves {foreground.sum()} patches; "
                       "lower it (or use None).")
  rgb = np.zeros((h * w, 3))
  rgb[foreground] = _minmax(_principal_components(x[foreground], 3))
  return rgb.reshape(h, w, 3)


def render(image: np.ndarray, colours: np.ndarray) -> Image.Image:
  """The image and its PCA colours (nearest-upsampled to the image size) side by side."""
  h, w = image.shape[:2]
  pca = Image.fromarray((colours * 255).round().astype(np.uint8)).resize((w, h), Image.NEAREST)
  canvas = Image.new("RGB", (2 * w, h))
  canvas.paste(Image.fromarray(image), (0, 0))
  canvas.paste(pca, (w, 0))
  return canvas


def run(config, workdir: str) -> dict:
  """Extracts a ViT's patch features for one image and writes `pca.png` and `features.npz`."""
  os.makedirs(workdir, exist_ok=True)
  raw = image_lib.load_image(config.image)  # before the checkpoint loads: a wrong path fails at once
  mesh = parallel.make_mesh(config.mesh, dcn_axes=config.get("mesh_dcn"))
  rules = tuple(tuple(r) for r in config.sharding_rules)
  model, params = hub.dinov2(config.model.name, checkpoint=config.checkpoint, seed=config.seed,
                             attention=config.attention, **config.model.overrides)
  if config.checkpoint is None:
    logging.warning("No --config.checkpoint given: features come from randomly initialised weights.")
  images = jnp.zeros((1, model.patch_size, model.patch_size, model.in_chans))
  abstract = jax.eval_shape(model.init, jax.random.key(0), images)
  params = parallel.to_device(params, parallel.logical_to_shardings(abstract, mesh, rules))

  image = image_lib.resize_to_patch_multiple(raw, config.resolution, model.patch_size)
  batch = jnp.asarray(image_lib.normalize(image)[None])
  with parallel.activation_sharding(mesh, rules):
    features = jax.jit(model.apply)(params, batch)
  h, w = image.shape[0] // model.patch_size, image.shape[1] // model.patch_size
  patch_tokens = np.asarray(features["x_norm_patchtokens"][0]).reshape(h, w, -1)
  colours = pca_rgb(patch_tokens, config.pca.foreground_threshold)

  picture = os.path.join(workdir, "pca.png")
  summary = {"image": config.image, "input_size": list(image.shape[:2]), "grid": [h, w],
             "embed_dim": int(patch_tokens.shape[-1]), "picture": picture,
             "random_weights": config.checkpoint is None}
  if jax.process_index() != 0:  # one writer for the shared workdir
    return summary
  render(image, colours).save(picture)
  np.savez(os.path.join(workdir, "features.npz"), cls=np.asarray(features["x_norm_clstoken"][0]),
           patch_tokens=patch_tokens)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  logging.info("Wrote %s (%dx%d patches of %d features).", picture, h, w, patch_tokens.shape[-1])
  return summary
