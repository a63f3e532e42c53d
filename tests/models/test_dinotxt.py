"""dino.txt's vision head: the image embedding is [CLS ; mean of the projected patches]."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinojax.models.dinotxt import VisionHead, backbone_tokens, swiglu_hidden_dim
from dinojax.models.vit import ViT


def test_swiglu_width_is_aligned_to_64_as_the_official_head():
  assert swiglu_hidden_dim(1024) == 2752  # ViT-L/14's head blocks
  assert swiglu_hidden_dim(384) == 1024


@pytest.mark.parametrize("embed_dim", [64, 48])  # 64: no projection (2×32), 48: 32 -> 24
def test_image_embedding_concatenates_cls_and_mean_patch(embed_dim):
  backbone = ViT(embed_dim=32, depth=1, num_heads=2, patch_size=4, img_size=16, num_register_tokens=2)
  images = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  b_params = backbone.init(jax.random.key(1), images)
  tokens = backbone_tokens(backbone.apply(b_params, images))
  assert tokens.shape == (3, 1 + 2 + 16, 32)
  head = VisionHead(embed_dim, num_heads=2, num_blocks=2, drop_path=0.3)
  params = head.init(jax.random.key(2), tokens, 3)
  assert ("projection" in params["params"]) == (embed_dim != 64)
  out = head.apply(params, tokens, 3)
  assert out["patch_embeds"].shape == (3, 16, embed_dim // 2)
  np.testing.assert_allclose(out["image_embeds"],
                             jnp.concatenate([out["cls"], out["patch_embeds"].mean(1)], -1), rtol=1e-6)
  # Stochastic depth only in training, and then it changes the output.
  train = head.apply(params, tokens, 3, train=True, rngs={"drop_path": jax.random.key(3)})
  assert train["image_embeds"].shape == (3, embed_dim)
