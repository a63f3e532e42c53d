"""The DINOv2 Vision Transformer (Oquab et al., 2023) as linen modules applied to a params pytree.

Images are NHWC float arrays. `ViT.__call__` returns the official `forward_features` dictionary
(`x_norm_clstoken`, `x_norm_regtokens`, `x_norm_patchtokens`, `x_prenorm`, `masks`), so code written
against the PyTorch repository reads the same here. Parameters carry logical axis names (`embed`, `mlp`,
`heads`, `kv`, `norm`; `layers` for the leading axis of scanned blocks); `dinojax.parallel` maps them to
mesh axes.

The blocks' params come in two layouts: one `blocks_i` entry per block (the default, the official
`blocks.i.` naming), or, with `scan_blocks`, one `blocks` entry whose leaves stack every block's on a
leading `layers` axis, run by one `nn.scan`. `stack_blocks` and `unstack_blocks` convert between them
(the converter and the checkpoint readers use them); both layouts are initialised alike.
"""

import dataclasses
import functools
import math
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dinojax import parallel
from dinojax.models.layers import Linear, dense_init, layer_norm, with_axes
from dinojax.ops import attention as attention_ops
from dinojax.ops.numerics import gelu
from dinojax.ops.resize import torch_bicubic_resize

# Official architectures (dinov2/models/vision_transformer.py); giant2 is always used with SwiGLU.
VARIANTS = {
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_giant2": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
}

LAYER_NORM_EPS = 1e-6

# What a rematerialised block (`remat=True`) keeps from its forward for the backward, by the name of
# its `jax.checkpoint_policies` entry; "nothing_saveable" recomputes the whole block.
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "everything_saveable")

# The metadata `nn.scan` and `stack_blocks` give the stacked blocks' leading axis.
_LAYERS = {nn.PARTITION_NAME: "layers"}
_BLOCK_KEY = re.compile(r"blocks_(\d+)")


def ffn_hidden_dim(embed_dim: int, mlp_ratio: float, ffn: str) -> int:
  """Hidden width of the FFN; SwiGLU keeps 2/3 of it, rounded up to a multiple of 8 (official)."""
  hidden = int(embed_dim * mlp_ratio)
  if ffn == "swiglu":
    hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
  return hidden


def drop_path_rates(rate: float, depth: int, uniform: bool) -> list[float]:
  """Each block's stochastic-depth rate: `rate` for all, or rising linearly from 0 (official)."""
  return [rate] * depth if uniform else np.linspace(0, rate, depth).tolist()


def stochastic_depth_keep(n: int, rate: float) -> int:
  """How many of n samples a residual branch computes under stochastic depth at `rate`."""
  return max(int(n * (1 - rate)), 1)


def stochastic_depth_residual(x: jax.Array, residual_fn: Callable[[jax.Array], jax.Array],
                              rate: float, rng: jax.Array, groups: int = 1) -> jax.Array:
  """Stochastic depth that skips the dropped samples' compute (DINOv2 §5, "efficient stochastic depth").

  The batch is cut into `groups` contiguous slices (one per device when the batch is sharded, so no
  sample leaves its device: the official subset is per GPU too). In each slice the residual branch runs
  on a random subset of max(int(n·(1-rate)), 1) of its n samples only, and its output is scaled by
  n/subset, so every sample's expected update equals the full residual.
  """
  batch = x.shape[0]
  if batch % groups:
    raise ValueError(f"Stochastic depth: batch {batch} does not split into {groups} groups.")
  n = batch // groups
  keep = stochastic_depth_keep(n, rate)
  # Sorted, distinct indices: the gather and scatter below need no atomics.
  kept = jax.vmap(lambda k: jnp.sort(jax.random.permutation(k, n)[:keep]))(jax.random.split(rng, groups))
  x = x.reshape(groups, n, *x.shape[1:])
  index = dict(indices_are_sorted=True, unique_indices=True, mode="promise_in_bounds")
  subset = jax.vmap(lambda xs, i: xs.at[i].get(**index))(x, kept)
  residual = residual_fn(subset.reshape(groups * keep, *x.shape[2:])).reshape(subset.shape)
  # vmap keeps `groups` a batch dim of the gather and scatter, which the partitioner splits per device.
  x = jax.vmap(lambda xs, i, r: xs.at[i].add(r, **index))(x, kept, residual.astype(x.dtype) * (n / keep))
  return x.reshape(batch, *x.shape[2:])


class PatchEmbed(nn.Module):
  """Non-overlapping patches to embeddings: (B, H, W, C) -> (B, H/p, W/p, D)."""
  patch_size: int
  embed_dim: int
  in_chans: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    if images.ndim != 4:
      raise ValueError(f"Expected NHWC images of rank 4, got shape {images.shape}.")
    b, h, w, c = images.shape
    p = self.patch_size
    if c != self.in_chans:
      raise ValueError(f"Expected images with {self.in_chans} channels (NHWC), got shape {images.shape}.")
    if h % p or w % p:
      raise ValueError(f"Image size {h}x{w} is not a multiple of the patch size {p}; "
                       f"resize or crop to e.g. {h // p * p}x{w // p * p}.")
    # Same as the strided convolution of the original, written as a matmul over patches.
    kernel = self.param("kernel", with_axes(nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform",
                                                                         in_axis=(0, 1, 2), out_axis=3),
                                        None, None, None, "embed"),
                        (p, p, c, self.embed_dim), self.param_dtype)
    # PyTorch's default Conv2d init: kaiming_uniform(a=√5) for the kernel, U(±1/√fan_in) for the bias.
    bound = (p * p * c) ** -0.5
    bias_init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    bias = self.param("bias", with_axes(bias_init, "embed"), (self.embed_dim,), self.param_dtype)
    patches = images.reshape(b, h // p, p, w // p, p, c).astype(self.dtype)
    out = jnp.einsum("byixjc,ijcd->byxd", patches, kernel.astype(self.dtype))
    return out + bias.astype(self.dtype)


class Attention(nn.Module):
  """Multi-head self-attention; qkv kernel is (embed, 3, heads, head_dim) so heads shard cleanly."""
  num_heads: int
  _: dataclasses.KW_ONLY
  qkv_bias: bool = True
  proj_bias: bool = True
  attention: str = "xla"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, logits: str | None = None):
    """Returns (output, logits): with `logits="all"` the pre-softmax scores q·k/√d (B, heads, T, T),
    from the materialising reference path; with `"cls"` only the CLS query's row (B, heads, T),
    beside the `attention` implementation's output, so no T×T array is built (Talk2DINO reads just that row)."""
    dim = x.shape[-1]
    qkv = Linear((3, self.num_heads, dim // self.num_heads), ("embed",), (None, "heads", "kv"),
                 use_bias=self.qkv_bias, dtype=self.dtype, param_dtype=self.param_dtype, name="qkv")(x)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    if logits == "all":
      scores = attention_ops.attention_logits(q, k)
      out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1).astype(v.dtype), v)
    else:
      out = attention_ops.dot_product_attention(q, k, v, attention=self.attention)
      scores = attention_ops.attention_logits(q[:, :1], k)[:, :, 0] if logits == "cls" else None
    out = Linear((dim,), ("heads", "kv"), ("embed",), use_bias=self.proj_bias, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="proj")(out)
    return out, scores


class Mlp(nn.Module):
  hidden_dim: int
  bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    x = Linear((self.hidden_dim,), ("embed",), ("mlp",), self.bias, self.dtype, self.param_dtype,
               name="fc1")(x)
    x = gelu(x)
    return Linear((dim,), ("mlp",), ("embed",), self.bias, self.dtype, self.param_dtype,
                  name="fc2")(x)


class SwiGLU(nn.Module):
  """SwiGLU FFN; w12 is (embed, 2, mlp): index 0 is the SiLU-gated half, as in the official w12."""
  hidden_dim: int
  bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    x12 = Linear((2, self.hidden_dim), ("embed",), (None, "mlp"), self.bias, self.dtype,
                 self.param_dtype, name="w12")(x)
    hidden = nn.silu(x12[..., 0, :]) * x12[..., 1, :]
    return Linear((dim,), ("mlp",), ("embed",), self.bias, self.dtype, self.param_dtype,
                  name="w3")(hidden)


class LayerScale(nn.Module):
  init_values: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gamma = self.param("gamma", with_axes(nn.initializers.constant(self.init_values), "norm"),
                       (x.shape[-1],), jnp.float32)
    return x * gamma.astype(x.dtype)


class Block(nn.Module):
  """Pre-norm transformer block with LayerScale and efficient stochastic depth. `norm_eps` is the
  backbone's 1e-6; blocks built with PyTorch's default LayerNorm (dino.txt's head) use 1e-5."""
  num_heads: int
  mlp_hidden_dim: int
  _: dataclasses.KW_ONLY
  ffn: str = "mlp"
  qkv_bias: bool = True
  proj_bias: bool = True
  ffn_bias: bool = True
  init_values: float | None = None
  drop_path: float = 0.0
  attention: str = "xla"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm_eps: float = LAYER_NORM_EPS

  def setup(self):
    self.norm1 = layer_norm("norm1", self.dtype, self.param_dtype, eps=self.norm_eps)
    self.attn = Attention(self.num_heads, qkv_bias=self.qkv_bias, proj_bias=self.proj_bias,
                          attention=self.attention, dtype=self.dtype, param_dtype=self.param_dtype)
    self.norm2 = layer_norm("norm2", self.dtype, self.param_dtype, eps=self.norm_eps)
    ffn_cls = {"mlp": Mlp, "swiglu": SwiGLU}[self.ffn]
    self.mlp = ffn_cls(self.mlp_hidden_dim, bias=self.ffn_bias, dtype=self.dtype,
                       param_dtype=self.param_dtype)
    identity = lambda x: x
    self.ls1 = LayerScale(self.init_values) if self.init_values else identity
    self.ls2 = LayerScale(self.init_values) if self.init_values else identity

  def _attn_branch(self, x):
    return self.ls1(self.attn(self.norm1(x))[0])

  def _ffn_branch(self, x):
    return self.ls2(self.mlp(self.norm2(x)))

  def _residual(self, x, branch, rng):
    if rng is None:
      return x + branch(x)
    groups = parallel.batch_shards()
    return stochastic_depth_residual(x, branch, self.drop_path, rng,
                                     groups if x.shape[0] % groups == 0 else 1)

  def __call__(self, x: jax.Array, train: bool = False, logits: str | None = None,
               drop_rng: jax.Array | None = None):
    """Returns (tokens, attention logits or None); `logits` ("all" or "cls", see `Attention`) needs
    eval mode (no drop path). Stochastic depth draws from `drop_rng` when given (the ViT passes each
    block its own key, so that scanned and unrolled blocks draw alike), else the `drop_path` stream."""
    if logits:
      out, scores = self.attn(self.norm1(x), logits)
      x = x + self.ls1(out)
      return x + self._ffn_branch(x), scores
    rngs = (None, None)
    if train and self.drop_path > 0.0:
      rngs = jax.random.split(drop_rng if drop_rng is not None else self.make_rng("drop_path"))
    x = self._residual(x, self._attn_branch, rngs[0])
    return self._residual(x, self._ffn_branch, rngs[1]), None


@functools.partial(jax.jit, static_argnums=(0, 1, 2))  # one program, also for an eager init
def _draw_blocks(block: Block, width: int, depth: int, rng: jax.Array) -> dict:
  """`depth` independent draws of `block`'s params by one vmapped init (XLA compiles one block's
  initialisers, not `depth` of them), in the scanned layout: `{"blocks": stacked}`."""
  x = jnp.zeros((1, 1, width))
  stacked = jax.vmap(lambda key: block.init(key, x)["params"])(jax.random.split(rng, depth))
  return {"blocks": nn.meta.add_axis(stacked, 0, _LAYERS)}


def _stack(*leaves):
  """Stacks on a new leading axis; host (NumPy) arrays stay on the host (a converted checkpoint is
  placed on its shardings only afterwards)."""
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def stack_blocks(params: dict) -> dict:
  """A ViT's params in the unrolled layout (`blocks_0` ... `blocks_{depth-1}`) -> the scanned one
  (`blocks`, each leaf stacked on a leading `layers` axis); the other entries are kept. Takes the
  ViT's own params dict or `{"params": ...}`; boxed (logically annotated) leaves get the `layers` name."""
  if "params" in params:
    return {**params, "params": stack_blocks(params["params"])}
  depth = sum(1 for k in params if _BLOCK_KEY.fullmatch(k))
  if not depth or "blocks" in params:
    raise ValueError(f"Expected a ViT's params in the unrolled layout (blocks_0, blocks_1, ...), got "
                     f"entries {sorted(params)}.")
  blocks = [params[f"blocks_{i}"] for i in range(depth)]
  rest = {k: v for k, v in params.items() if not _BLOCK_KEY.fullmatch(k)}
  return {**rest, "blocks": nn.meta.add_axis(jax.tree.map(_stack, *blocks), 0, _LAYERS)}


def unstack_blocks(params: dict) -> dict:
  """The inverse of `stack_blocks`: the scanned layout's `blocks` -> `blocks_0` ... `blocks_{depth-1}`."""
  if "params" in params:
    return {**params, "params": unstack_blocks(params["params"])}
  if "blocks" not in params:
    raise ValueError(f"Expected a ViT's params in the scanned layout (one stacked 'blocks' entry), got "
                     f"entries {sorted(params)}.")
  stacked = nn.meta.remove_axis(params["blocks"], 0, _LAYERS)
  depth = jax.tree.leaves(stacked)[0].shape[0]
  rest = {k: v for k, v in params.items() if k != "blocks"}
  return {**rest, **{f"blocks_{i}": jax.tree.map(lambda p: p[i], stacked) for i in range(depth)}}


class ViT(nn.Module):
  """DINOv2's `DinoVisionTransformer`.

  Attributes mirror the official constructor. `img_size` fixes the grid the position embedding is
  stored at (518 // 14 = 37 for the released checkpoints); inputs of any multiple of `patch_size`
  are accepted and the embedding is resized with PyTorch's bicubic (`interpolate_offset` and
  `interpolate_antialias` as in the official code: 0.1/False without registers, 0.0/True with).
  """
  embed_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  patch_size: int = 14
  img_size: int = 518
  in_chans: int = 3
  mlp_ratio: float = 4.0
  ffn: str = "mlp"
  qkv_bias: bool = True
  proj_bias: bool = True
  ffn_bias: bool = True
  init_values: float | None = 1.0
  num_register_tokens: int = 0
  drop_path_rate: float = 0.0
  drop_path_uniform: bool = False
  interpolate_offset: float = 0.1
  interpolate_antialias: bool = False
  attention: str = "xla"
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  scan_blocks: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.ffn not in ("mlp", "swiglu"):
      raise ValueError(f"Unknown ffn {self.ffn!r}; choose 'mlp' or 'swiglu'.")
    attention_ops.check_implementation(self.attention)
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"Unknown remat_policy {self.remat_policy!r}; choose one of {REMAT_POLICIES}.")
    d, p = self.embed_dim, self.patch_size
    grid = self.img_size // p
    self.patch_embed = PatchEmbed(p, d, self.in_chans, self.dtype, self.param_dtype)
    self.cls_token = self.param("cls_token", with_axes(nn.initializers.normal(1e-6), None, None, "embed"),
                                (1, 1, d), self.param_dtype)
    self.pos_embed = self.param("pos_embed", with_axes(dense_init, None, None, "embed"),
                                (1, grid * grid + 1, d), self.param_dtype)
    if self.num_register_tokens:
      self.register_tokens = self.param(
          "register_tokens", with_axes(nn.initializers.normal(1e-6), None, None, "embed"),
          (1, self.num_register_tokens, d), self.param_dtype)
    self.mask_token = self.param("mask_token", with_axes(nn.initializers.zeros, None, "embed"), (1, d),
                                 self.param_dtype)
    self.drop_rates = drop_path_rates(self.drop_path_rate, self.depth, self.drop_path_uniform)
    if self.scan_blocks and len(set(self.drop_rates)) > 1:
      raise ValueError("scan_blocks needs the same stochastic-depth rate in every block "
                       "(drop_path_uniform=True, or drop_path_rate=0).")
    if self.is_initializing():
      self._init_blocks()
    block = self._block_class()
    if self.scan_blocks:
      self.blocks = block(**self._block_kwargs(), drop_path=self.drop_rates[0], name="blocks")
    else:
      self.blocks = [block(**self._block_kwargs(), drop_path=rate, name=f"blocks_{i}")
                     for i, rate in enumerate(self.drop_rates)]
    self.norm = layer_norm("norm", self.dtype, self.param_dtype, eps=LAYER_NORM_EPS)

  def _block_kwargs(self) -> dict:
    """What every block shares (all but its stochastic-depth rate)."""
    return dict(num_heads=self.num_heads,
                mlp_hidden_dim=ffn_hidden_dim(self.embed_dim, self.mlp_ratio, self.ffn), ffn=self.ffn,
                qkv_bias=self.qkv_bias, proj_bias=self.proj_bias, ffn_bias=self.ffn_bias,
                init_values=self.init_values, attention=self.attention, dtype=self.dtype,
                param_dtype=self.param_dtype)

  def _block_class(self) -> type[Block]:
    """`Block`, or with `remat` the block recomputed in the backward, keeping what `remat_policy`
    saves. Its `train` and `logits` arguments (2 and 3, counting the module) choose the program."""
    if not self.remat:
      return Block
    return nn.remat(Block, policy=getattr(jax.checkpoint_policies, self.remat_policy),
                    prevent_cse=not self.scan_blocks, static_argnums=(2, 3))

  def _init_blocks(self):
    """Draws every block's params at once (`_draw_blocks`) and stores them in this model's layout,
    where the blocks find them: scanned and unrolled models initialise alike."""
    drawn = _draw_blocks(Block(**self._block_kwargs(), parent=None), self.embed_dim, self.depth,
                         self.make_rng("params"))
    for name, value in (drawn if self.scan_blocks else unstack_blocks(drawn)).items():
      self.put_variable("params", name, value)

  def interpolate_pos_encoding(self, h: int, w: int) -> jax.Array:
    """Position embedding (1, 1 + h*w, D) for an h×w patch grid."""
    pos = self.pos_embed.astype(jnp.float32)
    n = pos.shape[1] - 1
    m = math.isqrt(n)
    if n == h * w and h == w:
      return pos
    patch_pos = pos[:, 1:].reshape(1, m, m, -1)
    if self.interpolate_offset:
      # The official "historical kludge": a scale factor slightly above the ratio of grid sizes.
      scale = ((h + self.interpolate_offset) / m, (w + self.interpolate_offset) / m)
      patch_pos = torch_bicubic_resize(patch_pos, scale_factor=scale, antialias=self.interpolate_antialias)
    else:
      patch_pos = torch_bicubic_resize(patch_pos, size=(h, w), antialias=self.interpolate_antialias)
    return jnp.concatenate([pos[:, :1], patch_pos.reshape(1, h * w, -1)], axis=1)

  def prepare_tokens(self, images: jax.Array, masks: jax.Array | None = None) -> jax.Array:
    """Patch tokens (masked ones replaced by the mask token), CLS, position, then registers."""
    x = self.patch_embed(images)
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    if masks is not None:
      if masks.shape != (b, h * w):
        raise ValueError(f"masks must have shape (batch, patches) = {(b, h * w)}, got {masks.shape}.")
      x = jnp.where(masks[..., None], self.mask_token.astype(x.dtype)[None], x)
    cls = jnp.broadcast_to(self.cls_token.astype(x.dtype), (b, 1, d))
    x = jnp.concatenate([cls, x], axis=1)
    x = (x + self.interpolate_pos_encoding(h, w)).astype(self.dtype)
    if self.num_register_tokens:
      regs = jnp.broadcast_to(self.register_tokens.astype(x.dtype), (b, self.num_register_tokens, d))
      x = jnp.concatenate([x[:, :1], regs, x[:, 1:]], axis=1)
    return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))

  def _run_blocks(self, x, train, take=(), logits=None):
    """Tokens after the last block, the outputs of the blocks in `take` (in block order), and the
    last block's attention logits (with `logits`). Stochastic depth keys are per block, folded from
    one key by the block's index, so that scanned and unrolled blocks draw alike."""
    key = self.make_rng("drop_path") if train and self.drop_path_rate > 0 else None
    if self.scan_blocks:
      return self._scan_blocks(x, train, key, take, logits)
    taken, scores = [], None
    for i, block in enumerate(self.blocks):
      rng = None if key is None else jax.random.fold_in(key, i)
      x, scores = block(x, train, logits if i == self.depth - 1 else None, rng)
      x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
      if i in take:
        taken.append(x)
    return x, taken, scores

  def _scan_blocks(self, x, train, key, take, logits):
    """`_run_blocks` as one `nn.scan` over the stacked blocks, so that XLA compiles one block
    instead of `depth` of them (compile times: docs/benchmarks.md). The outputs of the blocks in
    `take` are written into a buffer carried through the scan (a slot each, and one scratch slot the
    other blocks write), so memory holds only those. A scan runs one body, so with `logits` every
    block computes its logits ("all": with the materialising attention) and the carry keeps the last."""
    taken = sorted(set(take))
    slots = np.full(self.depth, len(taken), np.int32)
    slots[taken] = np.arange(len(taken))
    buffer = jnp.zeros((len(taken) + 1, *x.shape), x.dtype) if taken else None
    b, t = x.shape[:2]
    scores_shape = {"cls": (b, self.num_heads, t), "all": (b, self.num_heads, t, t)}
    scores = jnp.zeros(scores_shape[logits], jnp.float32) if logits else None

    def body(block, carry, index, slot, key):
      x, buffer, _ = carry
      rng = None if key is None else jax.random.fold_in(key, index)
      x, scores = block(x, train, logits, rng)
      x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
      if buffer is not None:
        buffer = jax.lax.dynamic_update_index_in_dim(buffer, x, slot, 0)
      return (x, buffer, scores), None

    scan = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=(0, 0, nn.broadcast), length=self.depth, metadata_params=_LAYERS)
    (x, buffer, scores), _ = scan(self.blocks, (x, buffer, scores), jnp.arange(self.depth),
                                  jnp.asarray(slots), key)
    return x, [buffer[j] for j in range(len(taken))], scores

  def __call__(self, images: jax.Array, masks: jax.Array | None = None, *, train: bool = False,
               return_attention: bool = False, return_cls_attention: bool = False) -> dict[str, jax.Array]:
    """The official `forward_features` dict; with `return_attention`, also `attention`: the last
    block's softmax weights (B, heads, T, T) over all T = 1 + registers + patches tokens, and
    `attention_logits`, the same before the softmax (q·k/√d). With `return_cls_attention`, also
    `cls_attention_logits` (B, heads, T): the CLS query's row of those logits, which alone costs no
    T×T array, so the last block keeps the model's fast attention."""
    x = self.prepare_tokens(images, masks)
    which = "all" if return_attention else "cls" if return_cls_attention else None
    x, _, logits = self._run_blocks(x, train, logits=which)
    x_norm = self.norm(x)
    r = self.num_register_tokens
    out = {
        "x_norm_clstoken": x_norm[:, 0],
        "x_norm_regtokens": x_norm[:, 1:r + 1],
        "x_norm_patchtokens": x_norm[:, r + 1:],
        "x_prenorm": x,
        "masks": masks,
    }
    if return_attention:
      out["attention"] = jax.nn.softmax(logits, axis=-1)
      out["attention_logits"] = logits
    if return_cls_attention:
      out["cls_attention_logits"] = logits[:, :, 0] if return_attention else logits
    return out

  def get_intermediate_layers(self, images: jax.Array, n: int | Sequence[int] = 1,
                              reshape: bool = False, return_class_token: bool = False,
                              norm: bool = True):
    """Outputs of the last `n` blocks (or of the blocks listed in `n`), as in the official method.

    Patch tokens are (B, T, D), or (B, h, w, D) with `reshape` (NHWC, where PyTorch gives NCHW);
    with `return_class_token` each entry is a (patch_tokens, class_token) pair.
    """
    take = range(self.depth - n, self.depth) if isinstance(n, int) else tuple(n)
    bad = [i for i in take if not 0 <= i < self.depth]
    if bad:
      raise ValueError(f"Blocks {bad} do not exist in a ViT of depth {self.depth}.")
    x = self.prepare_tokens(images)
    _, outputs, _ = self._run_blocks(x, False, take=take)
    if norm:
      outputs = [self.norm(o) for o in outputs]
    class_tokens = [o[:, 0] for o in outputs]
    outputs = [o[:, 1 + self.num_register_tokens:] for o in outputs]
    if reshape:
      b, h, w, _ = images.shape
      outputs = [o.reshape(b, h // self.patch_size, w // self.patch_size, -1) for o in outputs]
    if return_class_token:
      return tuple(zip(outputs, class_tokens))
    return tuple(outputs)


def vit(variant: str, **kwargs) -> ViT:
  """A ViT by official variant name (`vit_small`, `vit_base`, `vit_large`, `vit_giant2`)."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown ViT variant {variant!r}; choose one of {sorted(VARIANTS)}.")
  return ViT(**{**VARIANTS[variant], **kwargs})
