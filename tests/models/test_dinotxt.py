"""dino.txt's vision head: the image embedding is [CLS ; mean of the projected patches]."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinojax.models.dinotxt import VisionHead, backbone_tokens, swiglu_hidden_dim
from dinojax.models.vit import ViT


def test_swiglu_width_is_aligned_to_64_as_the_official_head():
  assert swiglu_hidden_dim(1024) == 2752  # ViT-L/14's head blocks
  assert swiglu_hidden_dim(384) == 1024


@pytest.mark.slow
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


def test_the_vitl14_recipe_builds_2048_d_image_and_text_embeddings():
  import pathlib
  from dinojax import config_args
  from dinojax import backbones
  from dinojax.data.tokenizer import build_tokenizer
  from dinojax.models.dinotxt import build_towers
  config = config_args.load_config(pathlib.Path(__file__).resolve().parents[2] / "configs/dinotxt_vitl14.py")
  tokenizer = build_tokenizer(config, "", train_source=None)
  backbone = backbones.build_backbone(config)
  head, text = build_towers(config, backbone, tokenizer)
  tokens = jnp.zeros((1, 1 + 4 + 16 * 16, backbone.embed_dim))  # ViT-L/14 reg at 224
  head_out, head_params = jax.eval_shape(lambda t: head.init_with_output(jax.random.key(0), t, 5), tokens)
  assert head_out["image_embeds"].shape == (1, 2048) and "projection" not in head_params["params"]
  # The official blocks: no q/k/v bias, PyTorch's LayerNorm epsilon.
  assert "bias" not in nn.unbox(head_params)["params"]["blocks_0"]["attn"]["qkv"] and head.norm_eps == 1e-5
  ids = jnp.zeros((1, 77), jnp.int32)
  text_out, text_params = jax.eval_shape(lambda i: text.init_with_output(jax.random.key(0), i), ids)
  text_params = nn.unbox(text_params)
  assert text_out["text_embeds"].shape == (1, 2048)
  assert text_params["params"]["token_embedding"].shape == (49408, 1280)
  assert len([k for k in text_params["params"] if k.startswith("blocks_")]) == 24
  assert "bias" not in text_params["params"]["blocks_0"]["q_proj"]
