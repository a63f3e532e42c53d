"""Talk2DINO segmentation: the official formulas transcribed in NumPy, and the end-to-end API on
small random models (shapes, odd sizes, one or many classes, bad inputs)."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from dinojax import segment as seg
from dinojax.models import talk2dino
from dinojax.models.text import CLIP, TextTransformer
from dinojax.models.vit import ViT


def _softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _official_background_cleaning(mask, image_feat, maps, text_emb, lambda_bg=0.2):
  """`similarity_assignment_weighted`, one image, in NumPy (shapes as there: mask (1, N, h, w),
  image_feat (1, C, h, w), maps (1, M, hw), text_emb (N, C) normalised)."""
  bs, c, h, w = image_feat.shape
  _, n, _, _ = mask.shape
  feat = image_feat.reshape(bs, c, h * w)
  heads = (maps[:, :, None] * feat[:, None]).mean(-1)
  heads = heads / np.linalg.norm(heads, axis=-1, keepdims=True)
  sim = _softmax(text_emb[None] @ heads.transpose(0, 2, 1), -1)
  per_class = _softmax((maps[:, None] * sim[..., None]).sum(2) / sim.sum(-1)[..., None], -1)
  lo, hi = per_class.min(), per_class.max()
  hi = max(hi, hi - lo)
  per_class = (per_class - lo) / hi * (mask.max() - mask.min()) + mask.min()
  return (mask.reshape(n, h * w) + lambda_bg * per_class).reshape(bs, n, h, w) / (1 + lambda_bg)


def test_scores_and_background_cleaning_match_the_official_formulas():
  rng = np.random.default_rng(0)
  h, w, d, n, m = 3, 4, 8, 5, 2
  patches = rng.normal(size=(1, h, w, d)).astype(np.float32)
  text = rng.normal(size=(n, d)).astype(np.float32)
  text /= np.linalg.norm(text, axis=-1, keepdims=True)
  maps = rng.normal(size=(1, m, h * w)).astype(np.float32)
  masks = np.asarray(talk2dino.patch_scores(patches, text))
  unit = patches / np.linalg.norm(patches, axis=-1, keepdims=True)
  np.testing.assert_allclose(masks, 1 / (1 + np.exp(-np.einsum("bhwd,nd->bnhw", unit, text))), rtol=1e-5)
  ours = talk2dino.background_cleaning(masks, patches, maps, text, 0.2)
  ref = _official_background_cleaning(masks, patches.transpose(0, 3, 1, 2), maps, text, 0.2)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


WINDOWS = dict(short_side=56, window=56, stride=28)


@pytest.fixture(scope="module")
def models():
  vit = ViT(embed_dim=32, depth=2, num_heads=2, patch_size=14, img_size=56, num_register_tokens=4)
  text = TextTransformer(**CLIP, width=32, depth=1, num_heads=2, embed_dim=16)
  proj = talk2dino.TextToPatchProjection(dino_dim=32)
  key = jax.random.key(0)
  return seg.Talk2DINOModels(
      vit, nn.unbox(vit.init(key, np.zeros((1, 56, 56, 3), np.float32))),
      text, nn.unbox(text.init(key, np.zeros((1, 77), np.int32))),
      proj, nn.unbox(proj.init(key, np.zeros((1, 16), np.float32))))


@pytest.mark.slow
def test_window_masks_with_fast_attention_match_the_full_logits_path(models):
  """The scorer reads only the CLS row of the last block's logits beside "chunked" attention; the
  same masks built from the reference path's full T×T logits."""
  from dinojax.data import images as image_lib
  from dinojax.evaluators import open_vocab, talk2dino as evaluator
  fast = dataclasses.replace(models, backbone=models.backbone.clone(attention="chunked"))
  text = seg.class_embeddings(models, ["cat", "grass", "sky"])
  crops = np.random.default_rng(3).random((2, 56, 56, 3)).astype(np.float32) * 255
  ours = evaluator.window_scorer(fast, text, 56)(crops)
  x = (crops / 255.0 - image_lib.IMAGENET_MEAN) / image_lib.IMAGENET_STD
  out = models.backbone.apply(models.backbone_params, x, return_attention=True)
  patches = out["x_norm_patchtokens"].reshape(2, 4, 4, -1)
  masks = talk2dino.background_cleaning(talk2dino.patch_scores(patches, text), patches,
                                        out["attention_logits"][:, :, 0, 5:], text, 0.2)
  np.testing.assert_allclose(ours, open_vocab.upsample_scores(masks, (56, 56)), atol=1e-5)


@pytest.mark.parametrize("classes", [["cat"], ["cat", "grass", "sky", "a red car", "tree"]])
def test_segment_odd_sizes_and_class_counts(models, classes):
  image = (np.random.default_rng(1).random((75, 101, 3)) * 255).astype(np.uint8)
  labels, scores = seg.segment(image, classes, models, **WINDOWS)
  assert labels.shape == (75, 101) and scores.shape == (len(classes), 75, 101)
  assert labels.min() >= 0 and labels.max() < len(classes)
  np.testing.assert_array_equal(labels, scores.argmax(0))
  labels, _ = seg.segment(image, classes, models, background_threshold=2.0, **WINDOWS)
  assert (labels == -1).all()  # sigmoid scores never reach 2: everything is background


@pytest.mark.slow
def test_many_images_pamr_and_prompt_sets(models):
  rng = np.random.default_rng(2)
  images = [(rng.random(shape) * 255).astype(np.uint8) for shape in [(60, 90, 3), (56, 56, 3), (40, 130, 3)]]
  classes = ["cat", "sky"]
  many = list(seg.segment_many(images, classes, models, batch_size=4, **WINDOWS))
  for image, (labels, scores) in zip(images, many):
    one_labels, one_scores = seg.segment(image, classes, models, **WINDOWS)
    np.testing.assert_allclose(scores, one_scores, atol=1e-5)
    assert labels.shape == image.shape[:2]
  # One 56×56 window: PAMR's convex averages of neighbours stay within the unrefined scores' range.
  _, refined = seg.segment(images[1], classes, models, pamr=True, templates="sub_imagenet", **WINDOWS)
  _, plain = seg.segment(images[1], classes, models, templates="sub_imagenet", **WINDOWS)
  assert refined.shape == (2, 56, 56) and not np.allclose(refined, plain)
  assert refined.min() >= plain.min() - 1e-5 and refined.max() <= plain.max() + 1e-5
  with pytest.raises(ValueError, match="Unknown prompt templates"):
    seg.segment(images[0], classes, models, templates="imagenet80", **WINDOWS)
  with pytest.raises(ValueError, match="multiple of the backbone's patch size"):
    seg.segment(images[0], classes, models, window=50, stride=25)


def test_segment_bad_inputs(models):
  gray = np.zeros((40, 30), np.uint8)
  labels, _ = seg.segment(gray, ["cat", "dog"], models, short_side=28, window=28, stride=14)  # grayscale
  assert labels.shape == (40, 30)
  with pytest.raises(ValueError, match="at least one class"):
    seg.segment(gray, [], models)
  with pytest.raises(ValueError, match="image, got shape"):
    seg.segment(np.zeros((10, 10, 2), np.uint8), ["cat"], models)


@pytest.mark.slow
def test_cli_writes_a_mask(tmp_path):
  import subprocess
  import sys
  from PIL import Image
  out = tmp_path / "mask.png"
  cmd = [sys.executable, "-m", "dinojax.segment", "--image", "chelsea", "--classes", "cat, wall",
         "--out", str(out), "--backbone", "vits14_reg", "--short_side", "56", "--window", "56",
         "--stride", "28"]
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "randomly initialised" in result.stdout and Image.open(out).size == (451, 300)


def test_cli_checks_its_arguments_before_building_the_models(tmp_path, capsys):
  out = tmp_path / "mask.png"
  out.write_bytes(b"an earlier mask")
  (tmp_path / "broken.jpg").write_bytes(b"not a JPEG")
  (tmp_path / "clip.safetensors").write_bytes(b"")
  args = {"--image": "chelsea", "--classes": "cat, wall", "--out": str(out)}
  for bad, error in [
      ({"--classes": " , "}, "error: --classes names no class"),
      ({"--image": str(tmp_path / "broken.jpg")}, "Cannot read image"),
      ({"--backbone_checkpoint": "nope.pth", "--clip_checkpoint": str(tmp_path / "clip.safetensors"),
        "--projection": "psi.pth"},
       "error: no such file: --backbone_checkpoint nope.pth, --projection psi.pth")]:
    with pytest.raises(SystemExit) as exit_:
      seg.main([word for pair in {**args, **bad}.items() for word in pair])
    printed = capsys.readouterr()
    assert exit_.value.code == 2 and error in printed.err
    assert printed.err.startswith("usage: python -m dinojax.segment") and "randomly" not in printed.out
  assert out.read_bytes() == b"an earlier mask"  # nothing was written


@pytest.mark.slow
def test_class_embeddings_average_the_prompt_set(models):
  from dinojax.data.clip_tokenizer import tokenize
  templates = seg.TEMPLATES["sub_imagenet"]
  assert len(templates) == 7 and templates[0] == "itap of a {}."
  ours = seg.class_embeddings(models, ["cat", "red car"], "sub_imagenet")
  text = models.text_encoder.apply(models.text_params, tokenize([t.format("red car") for t in templates]))
  expected = models.projection.apply(models.projection_params, text["text_embeds"].mean(0, keepdims=True))
  np.testing.assert_allclose(ours[1], expected[0] / np.linalg.norm(expected[0]), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="one '\\{\\}' each"):
    seg.class_embeddings(models, ["cat"], ["a photo"])


def test_models_hold_their_params_on_the_device(models):
  """Checkpoints load as host NumPy arrays (transposed views among them); kept there, every scorer
  call would copy the whole backbone to the device again."""
  host = jax.tree.map(lambda x: np.asarray(x).T.copy().T, (models.backbone_params, models.text_params))
  placed = seg.Talk2DINOModels(models.backbone, host[0], models.text_encoder, host[1],
                               models.projection, jax.device_get(models.projection_params))
  for params in (placed.backbone_params, placed.text_params, placed.projection_params):
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params))
  np.testing.assert_array_equal(placed.backbone_params["params"]["patch_embed"]["kernel"],
                                host[0]["params"]["patch_embed"]["kernel"])
