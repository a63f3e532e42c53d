"""dino.txt's released files: state dicts with the official `VisionHead` and `TextTower` key names and
shapes (`dinov2/hub/text/`) load into our head and text tower and give the official outputs; the
export loads back into them with strict=True; bad files are errors naming the key.

The PyTorch modules below restate the official inference in our own words, with its module names, so
their state_dict keys are the official ones: the head's DINOv2 blocks (PyTorch's LayerNorm, no q/k/v
bias, LayerScale, SwiGLU with separate w1/w2 rounded up to 64), its final LayerNorm and the
[CLS ; mean of patches] pooling; the text tower's causal blocks (no q/k/v bias, exact GELU) and the
argmax (end-of-text) pooling with a bias-free projection.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax.linen import unbox as nn_unbox
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dinojax import convert, hub
from dinojax.convert import dinotxt as dinotxt_convert
from dinojax.models.dinotxt import VisionHead, backbone_tokens
from dinojax.models.text import TextTransformer

WIDTH, HEADS, REGISTERS, PATCHES = 32, 2, 2, 16
EMBED = 48  # 2 × 24: the head projects 32 -> 24
TEXT = dict(vocab=40, context=8, width=16, depth=2, heads=2)
EOT = TEXT["vocab"] - 1  # the largest id, as CLIP's <|endoftext|>


# ---------------------------------------------------------------------------------------------------
# The official inference, restated
# ---------------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
  def __init__(self, dim, heads, causal):
    super().__init__()
    self.heads, self.causal = heads, causal
    self.qkv = nn.Linear(dim, 3 * dim, bias=False)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, d = x.shape
    q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
    return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Gamma(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

  def forward(self, x):
    return x * self.gamma


class GatedFFN(nn.Module):
  """SiLU(w1 x) * (w2 x) -> w3, hidden 2/3 of 4·dim rounded up to a multiple of 64."""

  def __init__(self, dim):
    super().__init__()
    hidden = int(4 * dim * 2 / 3)
    hidden += -hidden % 64
    self.w1, self.w2, self.w3 = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.w3(F.silu(self.w1(x)) * self.w2(x))


class HeadBlock(nn.Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.norm1, self.attn, self.ls1 = nn.LayerNorm(dim), SelfAttention(dim, heads, False), Gamma(dim)
    self.norm2, self.mlp, self.ls2 = nn.LayerNorm(dim), GatedFFN(dim), Gamma(dim)

  def forward(self, x):
    x = x + self.ls1(self.attn(self.norm1(x)))
    return x + self.ls2(self.mlp(self.norm2(x)))


class OfficialVisionHead(nn.Module):
  def __init__(self, dim, heads, blocks, embed_dim):
    super().__init__()
    self.block_list = nn.ModuleList([HeadBlock(dim, heads) for _ in range(blocks)])
    self.ln_final = nn.LayerNorm(dim)
    self.linear_projection = (nn.Identity() if 2 * dim == embed_dim else
                              nn.Linear(dim, embed_dim // 2, bias=False))

  def forward(self, tokens, registers):
    """[CLS, registers, patches] -> (image embedding [CLS ; mean of patches], projected tokens)."""
    for block in self.block_list:
      tokens = block(tokens)
    tokens = self.linear_projection(self.ln_final(tokens))
    return torch.cat([tokens[:, 0], tokens[:, 1 + registers:].mean(1)], -1), tokens


class TextBlock(nn.Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.attention_norm, self.attention = nn.LayerNorm(dim), SelfAttention(dim, heads, True)
    self.ffn_norm = nn.LayerNorm(dim)
    self.feed_forward = nn.Sequential()
    self.feed_forward.add_module("fc1", nn.Linear(dim, 4 * dim))
    self.feed_forward.add_module("act", nn.GELU())
    self.feed_forward.add_module("fc2", nn.Linear(4 * dim, dim))

  def forward(self, x):
    x = x + self.attention(self.attention_norm(x))
    return x + self.feed_forward(self.ffn_norm(x))


class TextBackbone(nn.Module):
  def __init__(self, vocab, context, width, depth, heads):
    super().__init__()
    self.token_embedding = nn.Embedding(vocab, width)
    self.positional_embedding = nn.Parameter(torch.zeros(context, width))
    self.blocks = nn.ModuleList([TextBlock(width, heads) for _ in range(depth)])
    self.ln_final = nn.LayerNorm(width)

  def forward(self, ids):
    x = self.token_embedding(ids) + self.positional_embedding[:ids.shape[1]]
    for block in self.blocks:
      x = block(x)
    return self.ln_final(x)


class TextProjection(nn.Module):
  def __init__(self, width, embed_dim):
    super().__init__()
    self.linear_projection = nn.Linear(width, embed_dim, bias=False)


class OfficialTextTower(nn.Module):
  def __init__(self, vocab, context, width, depth, heads, embed_dim):
    super().__init__()
    self.backbone = TextBackbone(vocab, context, width, depth, heads)
    self.head = TextProjection(width, embed_dim)

  def forward(self, ids):
    x = self.head.linear_projection(self.backbone(ids))
    return x[torch.arange(len(ids)), ids.argmax(-1)]


def _randomised(module, seed):
  """Every tensor non-trivial (norm gains and biases, LayerScale included): a wrong layout shows."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(0.3 * torch.randn_like(p) if p.ndim == 1 else torch.randn_like(p) * p.shape[-1] ** -0.5)
    for m in module.modules():
      if isinstance(m, nn.LayerNorm):
        m.weight.add_(1.0)
  return module.eval()


def _state_dict(module):
  return {k: v.numpy().copy() for k, v in module.state_dict().items()}


def _torch_head():
  return OfficialVisionHead(WIDTH, HEADS, 2, EMBED)


def _torch_text():
  t = TEXT
  return OfficialTextTower(t["vocab"], t["context"], t["width"], t["depth"], t["heads"], EMBED)


def _our_head(**kwargs):
  return VisionHead(embed_dim=EMBED, num_heads=HEADS, num_blocks=2, **kwargs)


def _our_text():
  t = TEXT
  return TextTransformer(vocab_size=t["vocab"], context_length=t["context"], width=t["width"],
                         depth=t["depth"], num_heads=t["heads"], embed_dim=EMBED, eot_id=EOT)


def _tokens():
  # Backbone-like tokens at a small scale, where LayerNorm's epsilon (1e-5 vs 1e-6) matters.
  return np.random.default_rng(0).normal(0, 0.01, (2, 1 + REGISTERS + PATCHES, WIDTH)).astype(np.float32)


def _ids():
  ids = np.zeros((3, TEXT["context"]), np.int64)
  for row, caption in zip(ids, ([5, 7, 9], [11], [3, 30, 21, 8, 8, 2])):
    row[:len(caption) + 2] = [EOT - 1, *caption, EOT]  # <start> caption <end>, then padding 0
  return ids


@pytest.fixture(scope="module")
def head_case():
  ref = _randomised(_torch_head(), seed=0)
  with torch.no_grad():
    embeds, tokens = ref(torch.from_numpy(_tokens()), REGISTERS)
  head = _our_head()
  return ref, head, convert.dinotxt_vision_head_from_state_dict(_state_dict(ref), head, WIDTH), \
      embeds.numpy(), tokens.numpy()


@pytest.fixture(scope="module")
def text_case():
  ref = _randomised(_torch_text(), seed=1)
  with torch.no_grad():
    embeds = ref(torch.from_numpy(_ids())).numpy()
  text = _our_text()
  return ref, text, convert.dinotxt_text_encoder_from_state_dict(_state_dict(ref), text), embeds


# ---------------------------------------------------------------------------------------------------
# Parity, export, round trip
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_vision_head_gives_the_official_embeddings(head_case):
  _, head, params, embeds, tokens = head_case
  out = head.apply(params, jnp.asarray(_tokens()), 1 + REGISTERS)
  np.testing.assert_allclose(out["image_embeds"], embeds, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["cls"], tokens[:, 0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["patch_embeds"], tokens[:, 1 + REGISTERS:], rtol=1e-4, atol=1e-5)
  # The backbone's LayerNorm epsilon in the head's blocks is visibly off at this token scale.
  off = _our_head(norm_eps=1e-6).apply(params, jnp.asarray(_tokens()), 1 + REGISTERS)["image_embeds"]
  assert np.abs(np.asarray(off) - embeds).max() > 1e-3


def test_text_encoder_gives_the_official_embeddings(text_case):
  _, text, params, embeds = text_case
  out = text.apply(params, jnp.asarray(_ids(), jnp.int32))["text_embeds"]
  np.testing.assert_allclose(out, embeds, rtol=1e-4, atol=1e-5)


def test_export_loads_into_the_official_modules_strictly_and_round_trips(head_case, text_case):
  _, head, head_params, head_embeds, _ = head_case
  _, text, text_params, text_embeds = text_case
  fresh_head, fresh_text = _torch_head(), _torch_text()
  exported = {"head": convert.dinotxt_vision_head_to_state_dict(head_params),
              "text": convert.dinotxt_text_encoder_to_state_dict(text_params)}
  for module, sd in ((fresh_head, exported["head"]), (fresh_text, exported["text"])):
    module.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=True)
  with torch.no_grad():
    np.testing.assert_array_equal(fresh_head.eval()(torch.from_numpy(_tokens()), REGISTERS)[0].numpy(),
                                  head_embeds)
    np.testing.assert_array_equal(fresh_text.eval()(torch.from_numpy(_ids())).numpy(), text_embeds)
  # export -> import is the identity, bit for bit.
  again = convert.dinotxt_vision_head_from_state_dict(exported["head"], head, WIDTH)
  jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, head_params))
  again = convert.dinotxt_text_encoder_from_state_dict(exported["text"], text)
  jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, text_params))


def test_the_released_model_has_the_official_keys_and_shapes():
  """At the released sizes (ViT-L/14 reg, 2048-d, tet1280d20h24l) our export has exactly the keys and
  shapes of the official modules (built on the meta device and traced: nothing is allocated)."""
  model = hub.dinotxt_model("vitl14_reg")
  head_params = jax.eval_shape(lambda: nn_unbox(model.vision_head.init(
      jax.random.key(0), jnp.zeros((1, 2, 1024)), 1))["params"])
  text_params = jax.eval_shape(lambda: nn_unbox(model.text.init(
      jax.random.key(0), jnp.zeros((1, 77), jnp.int32)))["params"])
  with torch.device("meta"):
    official_head = OfficialVisionHead(1024, 16, 2, 2048)
    official_text = OfficialTextTower(49408, 77, 1280, 24, 20, 2048)
  for ours, official in ((jax.eval_shape(dinotxt_convert._vision_head_tensors, head_params), official_head),
                         (jax.eval_shape(dinotxt_convert._text_encoder_tensors, text_params), official_text)):
    official_shapes = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    assert {k: v.shape for k, v in ours.items()} == official_shapes
  assert len(ours) == 2 + 2 + 24 * 11 + 1 and "linear_projection.weight" not in official_head.state_dict()


# ---------------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------------
def test_bad_files_are_errors_naming_the_key(head_case, text_case):
  ref_head, head, *_ = head_case
  ref_text, text, *_ = text_case
  sd = _state_dict(ref_head)
  del sd["block_list.1.mlp.w2.bias"]
  with pytest.raises(KeyError, match=r"vision head checkpoint is missing key 'block_list\.1\.mlp\.w2\.bias'"):
    convert.dinotxt_vision_head_from_state_dict(sd, head, WIDTH)
  sd = {**_state_dict(ref_head), "block_list.0.attn.qkv.bias": np.zeros(3 * WIDTH, np.float32)}
  with pytest.raises(ValueError, match=r"does not use: \['block_list\.0\.attn\.qkv\.bias'\]"):
    convert.dinotxt_vision_head_from_state_dict(sd, head, WIDTH)  # a head with q/k/v biases
  sd = {**_state_dict(ref_head), "ln_final.weight": np.ones(WIDTH - 1, np.float32)}
  with pytest.raises(ValueError, match=r"'ln_final\.weight'.*\(31,\), the model expects \(32,\)"):
    convert.dinotxt_vision_head_from_state_dict(sd, head, WIDTH)
  sd = _state_dict(ref_text)
  del sd["head.linear_projection.weight"]
  with pytest.raises(KeyError, match=r"text encoder checkpoint is missing key 'head\.linear_projection"):
    convert.dinotxt_text_encoder_from_state_dict(sd, text)
  with pytest.raises(ValueError, match=r"'backbone\.token_embedding\.weight'.*\(40, 16\).*\(41, 16\)"):
    convert.dinotxt_text_encoder_from_state_dict(_state_dict(ref_text),
                                                 dataclasses.replace(text, vocab_size=41))


# ---------------------------------------------------------------------------------------------------
# The one-line loader
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_hub_loads_the_released_files_and_the_clip_tokenizer(tmp_path):
  """hub.dinotxt on the three files in the released layout (a 1-block ViT-S/14 reg backbone, a 1-block
  head, a 1-layer text tower on CLIP's vocabulary): its embeddings are the official ones."""
  rng = np.random.default_rng(0)  # random backbone values straight into a file: no init to compile
  abstract = jax.eval_shape(lambda: nn_unbox(hub.dinov2_model("vits14_reg", depth=1).init(
      jax.random.key(0), jnp.zeros((1, 14, 14, 3)))))
  backbone = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), abstract)
  ref_head = _randomised(OfficialVisionHead(384, 6, 1, 768), seed=2)
  ref_text = _randomised(OfficialTextTower(49408, 77, 16, 1, 2, 768), seed=3)
  files = {name: tmp_path / f"{name}.pth" for name in ("backbone", "vision_head", "text_encoder")}
  convert.save_state_dict(convert.params_to_state_dict(backbone), files["backbone"])
  torch.save(ref_head.state_dict(), files["vision_head"])
  torch.save(ref_text.state_dict(), files["text_encoder"])
  model, params, tokenize = hub.dinotxt("vits14_reg", depth=1, head=dict(embed_dim=768, num_blocks=1),
                                        text=dict(width=16, depth=1, num_heads=2), **files)
  ids = tokenize(["a photo of a cat.", "a diagram"])
  assert ids.shape == (2, 77) and ids[0, 0] == 49406
  images = np.random.default_rng(1).normal(size=(2, 28, 28, 3)).astype(np.float32)

  @jax.jit
  def run(params, images, ids):
    tokens = model.apply(params, images, method=lambda m, x: backbone_tokens(m.backbone(x)))
    return (tokens, model.apply(params, images, method=model.encode_image)["image_embeds"],
            model.apply(params, ids, method=model.encode_text)["text_embeds"],
            model.apply(params, images, ids))

  tokens, image, text, both = run(params, images, ids)
  with torch.no_grad():
    image_ref = ref_head(torch.tensor(np.asarray(tokens)), 4)[0].numpy()
    text_ref = ref_text(torch.tensor(ids, dtype=torch.long)).numpy()
  np.testing.assert_allclose(image, image_ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(text, text_ref, rtol=1e-4, atol=1e-5)
  unit = image_ref / np.linalg.norm(image_ref, axis=-1, keepdims=True)
  np.testing.assert_allclose(both["image_embeds"], unit, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(both["logit_scale"], 1 / 0.07, rtol=1e-6)
