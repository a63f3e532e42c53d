"""dino.txt's vision side (Jose et al., "DINOv2 Meets Text", 2025, §3): trainable transformer blocks on
top of a frozen DINOv2's output tokens, and the image embedding that concatenates the [CLS] token with
the average of the patch tokens.

The frozen backbone is a `dinojax.models.vit.ViT` applied separately (its params stay out of the
trained ones); `VisionHead` takes its normalised output tokens [CLS, registers, patches]. The two
halves of the image embedding live in two spaces: the first half (CLS) is the global one, the second
half (mean of patches) is the one every projected patch token shares, which is what makes the text
embedding's second half usable for open-vocabulary segmentation. `DinoTxt` puts backbone, head and
text tower together for inference (`hub.dinotxt` loads the released one).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinojax.models.text import TextTransformer
from dinojax.models.layers import layer_norm, with_axes
from dinojax.models.vit import Block, ViT
from dinojax.ops.numerics import l2_normalize

# PyTorch's nn.LayerNorm default, used by the official head's blocks and final norm.
HEAD_LAYER_NORM_EPS = 1e-5
# The official `init_logit_scale`, log(1/0.07); the released files do not store the learned one.
INIT_LOGIT_SCALE = math.log(1 / 0.07)


def swiglu_hidden_dim(embed_dim: int, mlp_ratio: float = 4.0, align_to: int = 64) -> int:
  """Hidden width of the head blocks' SwiGLU: 2/3 of mlp_ratio·D rounded up to a multiple of 64 (the
  official `SwiGLUFFNAligned(align_to=64)`; 2752 for ViT-L's 1024)."""
  hidden = int(int(embed_dim * mlp_ratio) * 2 / 3)
  return (hidden + align_to - 1) // align_to * align_to


def backbone_tokens(backbone_out: dict) -> jax.Array:
  """The frozen backbone's normalised tokens in their order, [CLS, registers, patches] (B, T, D)."""
  return jnp.concatenate([backbone_out["x_norm_clstoken"][:, None], backbone_out["x_norm_regtokens"],
                          backbone_out["x_norm_patchtokens"]], axis=1)


class VisionHead(nn.Module):
  """`num_blocks` DINOv2 blocks (SwiGLU, LayerScale 1e-5, stochastic depth) and a final LayerNorm on
  the backbone's tokens, then a bias-free linear map of every token to `embed_dim / 2` (skipped when
  the widths already match, as the official head does unless `use_linear_projection`).

  The defaults are the official head's blocks (`dinov2.layers.NestedTensorBlock`): no q/k/v bias and
  PyTorch's LayerNorm epsilon 1e-5; `qkv_bias=True, norm_eps=1e-6` gives the backbone's block instead.

  Returns {"image_embeds" (B, embed_dim) = [CLS ; mean of patches], "cls" (B, E/2), "patch_embeds"
  (B, N, E/2)}: the projected patch tokens, the dense features of open-vocabulary segmentation. With
  `return_cls_attention` (eval mode), also "cls_attention_logits" (B, heads, T): the CLS query's
  attention logits in the last block, as `ViT`'s (what the training pictures draw).
  """
  embed_dim: int
  num_heads: int
  num_blocks: int = 2
  drop_path: float = 0.3
  use_linear_projection: bool = False
  init_values: float = 1e-5
  qkv_bias: bool = False
  norm_eps: float = HEAD_LAYER_NORM_EPS
  attention: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, num_prefix_tokens: int, train: bool = False,
               return_cls_attention: bool = False) -> dict:
    """tokens (B, T, D) = [CLS, `num_prefix_tokens` - 1 registers, patches]."""
    width = tokens.shape[-1]
    if self.embed_dim % 2:
      raise ValueError(f"embed_dim={self.embed_dim} must be even: it concatenates CLS and patch halves.")
    if return_cls_attention and (train or not self.num_blocks):
      raise ValueError(f"return_cls_attention needs eval mode and a block (train={train}, "
                       f"num_blocks={self.num_blocks}).")
    x, logits = tokens.astype(self.dtype), None
    for i in range(self.num_blocks):
      last = return_cls_attention and i == self.num_blocks - 1
      x, logits = Block(self.num_heads, swiglu_hidden_dim(width), ffn="swiglu", qkv_bias=self.qkv_bias,
                        init_values=self.init_values, drop_path=self.drop_path, attention=self.attention,
                        dtype=self.dtype, norm_eps=self.norm_eps,
                        name=f"blocks_{i}")(x, train, logits="cls" if last else None)
    if self.num_blocks:
      x = layer_norm("norm", self.dtype, eps=HEAD_LAYER_NORM_EPS)(x)
    x = x.astype(jnp.float32)
    if self.use_linear_projection or width != self.embed_dim // 2:
      kernel = self.param("projection", with_axes(nn.initializers.normal(width ** -0.5), "embed", None),
                          (width, self.embed_dim // 2))
      x = x @ kernel
    cls, patches = x[:, 0], x[:, num_prefix_tokens:]
    out = {"image_embeds": jnp.concatenate([cls, patches.mean(axis=1)], axis=-1), "cls": cls,
           "patch_embeds": patches}
    if return_cls_attention:
      out["cls_attention_logits"] = logits
    return out


def encode_image(backbone: nn.Module, backbone_params: dict, head: VisionHead, head_params: dict,
                 images: jax.Array, train: bool = False, rng: jax.Array | None = None) -> dict:
  """Images (B, H, W, 3) through the backbone (never in training mode: no stochastic depth) and the
  head; the head's outputs (`VisionHead`), unnormalised."""
  tokens = backbone_tokens(backbone.apply({"params": backbone_params}, images))
  rngs = {"drop_path": rng} if train else None
  return head.apply({"params": head_params}, tokens, 1 + backbone.num_register_tokens, train=train,
                    rngs=rngs)


class DinoTxt(nn.Module):
  """The whole dino.txt, as the official `DinoTxt`: the frozen `backbone`, the `vision_head` on its
  tokens and the `text` tower. Params {"backbone", "vision_head", "text", "logit_scale"}: the
  trainer's trained params plus the backbone's.

  `encode_image` gives the head's outputs (`VisionHead`: "image_embeds" = [CLS ; mean of patches],
  "cls", "patch_embeds") and `encode_text` the tower's ("text_embeds", ...), unnormalised as the
  official methods; the call gives both unit embeddings and exp(logit_scale), its `forward`.
  """
  backbone: ViT
  vision_head: VisionHead
  text: TextTransformer

  def setup(self):
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(INIT_LOGIT_SCALE), (),
                                  jnp.float32)

  def encode_image(self, images: jax.Array) -> dict:
    """ImageNet-normalised images (B, H, W, 3) -> the head's outputs."""
    return self.vision_head(backbone_tokens(self.backbone(images)), 1 + self.backbone.num_register_tokens)

  def encode_text(self, token_ids: jax.Array) -> dict:
    """Token ids (B, T) -> the text tower's outputs."""
    return self.text(token_ids)

  def __call__(self, images: jax.Array, token_ids: jax.Array) -> dict:
    return {"image_embeds": l2_normalize(self.encode_image(images)["image_embeds"]),
            "text_embeds": l2_normalize(self.encode_text(token_ids)["text_embeds"]),
            "logit_scale": jnp.exp(self.logit_scale)}


def build_towers(config, backbone: ViT, tokenizer) -> tuple[VisionHead, TextTransformer]:
  """The vision head and the text tower a dino.txt config describes (`config.vision`, `config.text`),
  on `backbone` and with the vocabulary and pooling/padding ids of `tokenizer`
  (`data.tokenizer.Tokenizer`)."""
  v = config.vision
  head = VisionHead(embed_dim=config.embed_dim, num_heads=backbone.num_heads, num_blocks=v.num_blocks,
                    drop_path=v.drop_path, use_linear_projection=v.use_linear_projection,
                    init_values=v.init_values, qkv_bias=v.qkv_bias, norm_eps=v.norm_eps,
                    attention=config.backbone.attention, dtype=backbone.dtype)
  t = config.text
  text = TextTransformer(vocab_size=tokenizer.vocab_size, context_length=t.context_length, width=t.width,
                         depth=t.depth, num_heads=t.num_heads, embed_dim=config.embed_dim,
                         pooling=t.pooling, eot_id=tokenizer.eot_id, pad_id=tokenizer.pad_id,
                         activation=t.activation, qkv_bias=t.qkv_bias, attention=t.attention,
                         dtype=jnp.dtype(t.dtype))
  return head, text
