"""The DINOv2 Vision Transformer (Oquab et al., 2023) as linen modules applied to a params pytree.

Images are NHWC float arrays. `ViT.__call__` returns the official `forward_features` dictionary
(`x_norm_clstoken`, `x_norm_regtokens`, `x_norm_patchtokens`, `x_prenorm`, `masks`), so code written
against the PyTorch repository reads the same here. Parameters carry logical axis names (`embed`, `mlp`,
`heads`, `kv`, `norm`); `dinojax.parallel` maps them to mesh axes.
"""

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dinojax import parallel
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


def with_axes(init: Callable, *names: str | None) -> Callable:
  """`init` whose params carry the logical axis `names` (mapped to mesh axes by `parallel`)."""
  return nn.with_logical_partitioning(init, names)


# The official `trunc_normal_(std=0.02)` keeps PyTorch's absolute bounds ±2, i.e. ±100σ: in effect
# N(0, 0.02²). (Flax's `truncated_normal(0.02)` cuts at ±2σ, a standard deviation of 0.0176.)
_dense_init = nn.initializers.normal(0.02)


def ffn_hidden_dim(embed_dim: int, mlp_ratio: float, ffn: str) -> int:
  """Hidden width of the FFN; SwiGLU keeps 2/3 of it, rounded up to a multiple of 8 (official)."""
  hidden = int(embed_dim * mlp_ratio)
  if ffn == "swiglu":
    hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
  return hidden


def layer_norm(name: str, dtype: Any, param_dtype: Any = jnp.float32,
               eps: float = LAYER_NORM_EPS) -> nn.LayerNorm:
  """LayerNorm whose scale and bias carry the (replicated) `norm` axis."""
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=with_axes(nn.initializers.ones, "norm"), bias_init=with_axes(nn.initializers.zeros, "norm"))


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


class Linear(nn.Module):
  """x @ kernel contracting x's last `len(in_axes)` dims; the kernel is (*inputs, *features) with
  logical names `in_axes + out_axes`. (Our own rather than `nn.DenseGeneral`, whose flattened init
  cannot carry per-dimension logical names.)"""
  features: tuple[int, ...]
  in_axes: tuple[str | None, ...]
  out_axes: tuple[str | None, ...]
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    contract = len(self.in_axes)
    kernel = self.param("kernel", with_axes(_dense_init, *self.in_axes, *self.out_axes),
                        (*x.shape[-contract:], *self.features), self.param_dtype)
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=contract)
    if self.use_bias:
      bias = self.param("bias", with_axes(nn.initializers.zeros, *self.out_axes), self.features,
                        self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class Attention(nn.Module):
  """Multi-head self-attention; qkv kernel is (embed, 3, heads, head_dim) so heads shard cleanly."""
  num_heads: int
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
    self.norm1 = layer_norm("norm1", self.dtype, self.param_dtype, self.norm_eps)
    self.attn = Attention(self.num_heads, qkv_bias=self.qkv_bias, proj_bias=self.proj_bias,
                          attention=self.attention, dtype=self.dtype, param_dtype=self.param_dtype)
    self.norm2 = layer_norm("norm2", self.dtype, self.param_dtype, self.norm_eps)
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
def _draw_blocks(block: Block, width: int, depth: int, rng: jax.Array) -> list:
  """`depth` independent draws of `block`'s params (one vmapped init), as a list."""
  x = jnp.zeros((1, 1, width))
  stacked = jax.vmap(lambda key: block.init(key, x)["params"])(jax.random.split(rng, depth))
  return [jax.tree.map(lambda p: p[i], stacked) for i in range(depth)]


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
  scan_blocks: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.ffn not in ("mlp", "swiglu"):
      raise ValueError(f"Unknown ffn {self.ffn!r}; choose 'mlp' or 'swiglu'.")
    attention_ops.check_implementation(self.attention)
    d, p = self.embed_dim, self.patch_size
    grid = self.img_size // p
    self.patch_embed = PatchEmbed(p, d, self.in_chans, self.dtype, self.param_dtype)
    self.cls_token = self.param("cls_token", with_axes(nn.initializers.normal(1e-6), None, None, "embed"),
                                (1, 1, d), self.param_dtype)
    self.pos_embed = self.param("pos_embed", with_axes(_dense_init, None, None, "embed"),
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
    self.block_params = self._init_block_params()
    self.norm = layer_norm("norm", self.dtype, self.param_dtype)

  def _block(self, rate: float) -> "Block":
    """An unbound `Block`, applied to each block's params (`block_params`)."""
    return Block(self.num_heads, ffn_hidden_dim(self.embed_dim, self.mlp_ratio, self.ffn), ffn=self.ffn,
                 qkv_bias=self.qkv_bias, proj_bias=self.proj_bias, ffn_bias=self.ffn_bias,
                 init_values=self.init_values, drop_path=rate, attention=self.attention,
                 dtype=self.dtype, param_dtype=self.param_dtype, parent=None)

  def _init_block_params(self) -> list:
    """Each block's params as one `blocks_i` param (the tree a `Block` submodule would hold), all
    initialised by one vmapped init: XLA compiles one block's initialisers, not `depth` of them
    (compile times: docs/benchmarks.md)."""
    drawn = []

    def init(i):
      def init_fn(rng):
        if not drawn:
          drawn.extend(_draw_blocks(self._block(0.0), self.embed_dim, self.depth, rng))
        return drawn[i]
      return init_fn

    return [self.param(f"blocks_{i}", init(i)) for i in range(self.depth)]

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
    """Tokens after the last block, the outputs of the blocks in `take`, and the last block's
    attention logits (with `logits`).

    The blocks run one after another in the program, or with `scan_blocks` as `lax.scan`s over
    their params stacked on the fly, so that XLA compiles one block instead of `depth` of them
    (compile times: docs/benchmarks.md); the params tree is the same. The
    blocks between two whose outputs are taken form one scan; the last block runs on its own when
    its attention logits are asked for. Stochastic depth keys are per block, folded from one key,
    so both ways draw alike.
    """
    key = self.make_rng("drop_path") if train and self.drop_path_rate > 0 else None

    def block_fn(i, block_logits=None):
      block = self._block(self.drop_rates[i])

      def apply(x, params, index):
        rng = None if key is None else jax.random.fold_in(key, index)
        x, scores = block.apply({"params": params}, x, train, block_logits, rng)
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed")), scores

      return jax.checkpoint(apply, prevent_cse=not self.scan_blocks) if self.remat else apply

    def run(x, first, stop):  # blocks first, ..., stop - 1
      if stop <= first:
        return x
      if not self.scan_blocks:
        for i in range(first, stop):
          x, _ = block_fn(i)(x, self.block_params[i], i)
        return x
      stacked = jax.tree.map(lambda *p: jnp.stack(p), *self.block_params[first:stop])
      body = block_fn(first)  # every block has the same drop rate when scanned
      return jax.lax.scan(lambda x, p_i: (body(x, *p_i)[0], None), x, (stacked, jnp.arange(first, stop)))[0]

    taken, scores, first, last = [], None, 0, self.depth - 1
    for i in sorted({*take, last}):
      if logits and i == last:
        x, scores = block_fn(last, logits)(run(x, first, last), self.block_params[last], last)
      else:
        x = run(x, first, i + 1)
      if i in take:
        taken.append(x)
      first = i + 1
    return x, taken, scores

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
