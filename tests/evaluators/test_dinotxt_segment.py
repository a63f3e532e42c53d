"""dino.txt dense inference: projected patch tokens against the patch half of the class text
embeddings, through the shared sliding-window core."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinojax.data import images as image_lib
from dinojax.data.tokenizer import Tokenizer
from dinojax.evaluators import dinotxt, open_vocab
from dinojax.models.dinotxt import VisionHead, backbone_tokens
from dinojax.models.text import TextTransformer
from dinojax.models.vit import ViT


@pytest.fixture(scope="module")
def models():
  backbone = ViT(embed_dim=32, depth=1, num_heads=2, patch_size=4, img_size=16, num_register_tokens=1)
  head = VisionHead(48, num_heads=2, num_blocks=1)
  text = TextTransformer(vocab_size=40, context_length=8, width=16, depth=1, num_heads=2, embed_dim=48,
                         eot_id=3, pad_id=0)
  images = jnp.zeros((1, 16, 16, 3))
  b_params = backbone.init(jax.random.key(0), images)["params"]
  h_params = head.init(jax.random.key(1), backbone_tokens(backbone.apply({"params": b_params}, images)), 2)
  t_params = text.init(jax.random.key(2), jnp.zeros((1, 8), jnp.int32))["params"]

  def encode(texts):  # a toy tokenizer: one id per character
    out = np.zeros((len(texts), 8), np.int32)
    for row, t in zip(out, texts):
      ids = [2, *[4 + ord(c) % 36 for c in t][:6], 3]
      row[:len(ids)] = ids
    return out

  return dinotxt.DinoTxtModels(backbone, b_params, head, h_params["params"], text, t_params,
                               Tokenizer(encode, 40, 3, 0, "toy"))


@pytest.mark.slow
def test_window_scores_are_cosines_of_projected_patches_and_text_halves(models):
  classes = ["cat", "grass", "sky"]
  text = dinotxt.class_embeddings(models, classes, ["a {}.", "the {}."])
  assert text.shape == (3, 24)
  np.testing.assert_allclose(np.linalg.norm(text, axis=-1), 1.0, rtol=1e-5)
  crops = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
  scores = np.asarray(dinotxt.window_scorer(models, text, window=16)(crops))
  assert scores.shape == (2, 3, 16, 16)
  # Reference at patch resolution, upsampled by the shared core's (separately tested) bilinear.
  x = (crops / 255.0 - image_lib.IMAGENET_MEAN) / image_lib.IMAGENET_STD
  tokens = backbone_tokens(models.backbone.apply({"params": models.backbone_params}, jnp.asarray(x)))
  patches = np.asarray(models.head.apply({"params": models.head_params}, tokens, 2)["patch_embeds"])
  patches = patches / np.linalg.norm(patches, axis=-1, keepdims=True)
  coarse = np.einsum("bpd,nd->bnp", patches, text).reshape(2, 3, 4, 4)
  want = open_vocab.upsample_scores(jnp.asarray(coarse, jnp.float32), (16, 16), align_corners=False)
  np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-5)
  assert np.all(np.abs(scores) <= 1 + 1e-5)


def test_segment_gives_labels_at_the_image_size(models):
  image = np.random.default_rng(1).integers(0, 255, (20, 28, 3), dtype=np.uint8)
  labels, scores = dinotxt.segment(image, ["cat", "grass"], models, short_side=16, window=16, stride=8)
  assert labels.shape == (20, 28) and scores.shape == (2, 20, 28)
  np.testing.assert_array_equal(labels, scores.argmax(0))
  labels, _ = dinotxt.segment(image, ["cat", "grass"], models, short_side=16, window=16, stride=8,
                              background_threshold=2.0)
  assert (labels == -1).all()
  with pytest.raises(ValueError, match="multiple of the backbone's patch size"):
    dinotxt.window_scorer(models, np.zeros((2, 24)), window=18)


def test_a_checkpoint_with_other_params_than_the_model_is_an_error(models):
  """A head saved with q/k/v biases (dinojax's layout before the official one was the default) is not
  silently applied without them."""
  ids = jnp.zeros((1, 8), jnp.int32)
  dinotxt.check_saved_params(models.text_params, models.text, ids, name="text tower")
  with_bias = models.text.clone(qkv_bias=True).init(jax.random.key(0), ids)["params"]
  match = r"text tower does not match.*'blocks_0/k_proj/bias'.*text\.qkv_bias=True"
  with pytest.raises(ValueError, match=match):
    dinotxt.check_saved_params(with_bias, models.text, ids, name="text tower")
