from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from dinojax.models.vit import (VARIANTS, ViT, ffn_hidden_dim, stack_blocks, stochastic_depth_residual,
                                unstack_blocks, vit)

TINY = dict(embed_dim=64, depth=3, num_heads=4, patch_size=14, img_size=56, init_values=0.1)


def _init(model, shape=(2, 56, 56, 3)):
  x = jax.random.normal(jax.random.key(1), shape)
  return nn.unbox(model.init(jax.random.key(0), x)), x


@pytest.mark.parametrize("registers", [0, 4])
def test_forward_features_dict(registers):
  model = ViT(**TINY, num_register_tokens=registers)
  params, x = _init(model, (2, 56, 42, 3))
  out = model.apply(params, x)
  assert set(out) == {"x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm", "masks"}
  assert out["x_norm_clstoken"].shape == (2, 64)
  assert out["x_norm_regtokens"].shape == (2, registers, 64)
  assert out["x_norm_patchtokens"].shape == (2, 4 * 3, 64)
  assert out["x_prenorm"].shape == (2, 1 + registers + 12, 64)
  assert out["masks"] is None


def test_init_is_the_official_one():
  model = ViT(embed_dim=192, depth=2, num_heads=3, patch_size=14, img_size=224)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 3))))["params"]
  # trunc_normal_(std=0.02) with PyTorch's absolute bounds ±2 (±100σ): std 0.02, not flax's ±2σ 0.0176.
  for w in (params["blocks_1"]["mlp"]["fc1"]["kernel"], params["pos_embed"]):
    assert float(np.std(w)) == pytest.approx(0.02, rel=0.02)
  np.testing.assert_array_equal(params["blocks_0"]["attn"]["qkv"]["bias"], 0.0)
  # The patch embedding keeps PyTorch's Conv2d init: U(±1/√fan_in), kernel and bias alike.
  bound = 1 / np.sqrt(14 * 14 * 3)
  for w in (params["patch_embed"]["kernel"], params["patch_embed"]["bias"]):
    assert float(np.abs(w).max()) <= bound and float(np.abs(w).max()) > 0.9 * bound


def test_official_variant_sizes():
  assert VARIANTS["vit_small"] == dict(embed_dim=384, depth=12, num_heads=6)
  assert VARIANTS["vit_large"] == dict(embed_dim=1024, depth=24, num_heads=16)
  g = vit("vit_giant2")
  assert (g.embed_dim, g.depth, g.num_heads, g.ffn) == (1536, 40, 24, "swiglu")
  assert ffn_hidden_dim(1536, 4, "swiglu") == 4096  # official ViT-g/14 w12 is (8192, 1536)
  with pytest.raises(ValueError, match="Unknown ViT variant"):
    vit("vit_huge")


def test_patch_size_16_and_swiglu():
  model = ViT(**{**TINY, "patch_size": 16, "img_size": 64, "ffn": "swiglu"})
  params, _ = _init(model, (1, 64, 48, 3))
  w12 = params["params"]["blocks_0"]["mlp"]["w12"]["kernel"]
  assert w12.shape == (64, 2, ffn_hidden_dim(64, 4, "swiglu"))
  out = model.apply(params, jnp.ones((1, 64, 48, 3)))
  assert out["x_norm_patchtokens"].shape == (1, 12, 64)


def test_masks_replace_patches_with_mask_token():
  model = ViT(**TINY)
  params, x = _init(model)
  params["params"]["mask_token"] = jnp.full((1, 64), 3.0)
  masks = jnp.zeros((2, 16), bool).at[0, 5].set(True)
  tokens = model.apply(params, x, masks, method=ViT.prepare_tokens)
  plain = model.apply(params, x, method=ViT.prepare_tokens)
  pos = model.apply(params, 4, 4, method=ViT.interpolate_pos_encoding)
  np.testing.assert_allclose(tokens[0, 1 + 5], 3.0 + pos[0, 1 + 5], atol=1e-6)
  np.testing.assert_allclose(tokens[1], plain[1])
  assert model.apply(params, x, masks)["masks"] is masks
  with pytest.raises(ValueError, match="masks must have shape"):
    model.apply(params, x, jnp.zeros((2, 15), bool))


def test_intermediate_layers_match_forward():
  model = ViT(**TINY, num_register_tokens=4)
  params, x = _init(model)
  out = model.apply(params, x)
  last, = model.apply(params, x, 1, method=ViT.get_intermediate_layers)
  np.testing.assert_allclose(last, out["x_norm_patchtokens"], atol=1e-6)
  layers = model.apply(params, x, [0, 2], reshape=True, return_class_token=True, norm=False,
                       method=ViT.get_intermediate_layers)
  (patches0, cls0), (patches2, cls2) = layers
  assert patches0.shape == (2, 4, 4, 64) and cls0.shape == (2, 64)
  np.testing.assert_allclose(cls2, out["x_prenorm"][:, 0], atol=1e-6)
  with pytest.raises(ValueError, match="do not exist"):
    model.apply(params, x, [3], method=ViT.get_intermediate_layers)


def test_last_block_attention_maps():
  model = ViT(**TINY, num_register_tokens=4)
  params, x = _init(model)
  out = model.apply(params, x, return_attention=True)
  assert out["attention"].shape == (2, 4, 1 + 4 + 16, 1 + 4 + 16)
  np.testing.assert_allclose(out["attention"].sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(out["x_prenorm"], model.apply(params, x)["x_prenorm"], atol=1e-5)


@pytest.mark.parametrize("attention", ["xla", "chunked"])
def test_cls_attention_logits_are_the_cls_row_of_the_full_logits(attention):
  model = ViT(**TINY, num_register_tokens=4, attention=attention)
  params, x = _init(model)
  full = model.apply(params, x, return_attention=True)
  cls = model.apply(params, x, return_cls_attention=True)
  assert cls["cls_attention_logits"].shape == (2, 4, 1 + 4 + 16)
  assert "attention_logits" not in cls
  np.testing.assert_allclose(cls["cls_attention_logits"], full["attention_logits"][:, :, 0], atol=1e-5)
  np.testing.assert_allclose(cls["x_prenorm"], full["x_prenorm"], atol=1e-5)
  both = model.apply(params, x, return_attention=True, return_cls_attention=True)
  np.testing.assert_array_equal(both["cls_attention_logits"], full["attention_logits"][:, :, 0])


def test_bad_inputs_have_clear_errors():
  model = ViT(**TINY)
  params, _ = _init(model)
  with pytest.raises(ValueError, match="not a multiple of the patch size 14"):
    model.apply(params, jnp.zeros((1, 50, 56, 3)))
  with pytest.raises(ValueError, match="3 channels"):
    model.apply(params, jnp.zeros((1, 56, 56, 4)))
  with pytest.raises(ValueError, match="rank 4"):
    model.apply(params, jnp.zeros((56, 56, 3)))
  with pytest.raises(ValueError, match="Unknown attention"):
    ViT(**TINY, attention="flash").init(jax.random.key(0), jnp.zeros((1, 56, 56, 3)))


def test_stochastic_depth_is_identity_at_eval_and_remat_agrees():
  model = ViT(**TINY, drop_path_rate=0.5)
  params, x = _init(model)
  no_drop = ViT(**TINY).apply(params, x)["x_prenorm"]
  np.testing.assert_allclose(model.apply(params, x)["x_prenorm"], no_drop, atol=1e-6)
  remat = ViT(**TINY, drop_path_rate=0.5, remat=True)
  rngs = {"drop_path": jax.random.key(3)}
  np.testing.assert_allclose(remat.apply(params, x, train=True, rngs=rngs)["x_prenorm"],
                             model.apply(params, x, train=True, rngs=rngs)["x_prenorm"], atol=1e-5)


def test_stochastic_depth_computes_only_kept_samples():
  x = jnp.arange(8 * 3 * 2, dtype=jnp.float32).reshape(8, 3, 2)
  seen = []

  def residual(y):
    seen.append(y.shape[0])
    return jnp.ones_like(y)

  out = stochastic_depth_residual(x, residual, 0.25, jax.random.key(0))
  assert seen == [6]  # int(8 * 0.75) samples computed, the rest skipped
  changed = np.abs(np.asarray(out - x)).max(axis=(1, 2))
  np.testing.assert_allclose(np.sort(changed), [0.0, 0.0] + [8 / 6] * 6, atol=1e-5)


def test_stochastic_depth_draws_its_subset_within_each_group():
  x = jnp.zeros((12, 3, 2))
  out = stochastic_depth_residual(x, jnp.ones_like, 0.4, jax.random.key(0), groups=3)
  changed = np.abs(np.asarray(out)).max(axis=(1, 2)).reshape(3, 4) > 0
  # int(4 · 0.6) = 2 of each group's 4 samples, scaled by 4/2.
  np.testing.assert_array_equal(changed.sum(1), [2, 2, 2])
  np.testing.assert_allclose(np.asarray(out).max(axis=(1, 2)).reshape(3, 4)[changed], 2.0)
  with pytest.raises(ValueError, match="does not split into 5 groups"):
    stochastic_depth_residual(x, jnp.ones_like, 0.4, jax.random.key(0), groups=5)


def test_sharded_stochastic_depth_keeps_samples_on_their_devices(monkeypatch):
  """On a data-sharded batch each device drops within its own slice: the forward communicates
  nothing, and equals the unsharded model drawing per 8 groups."""
  from dinojax import parallel
  model = ViT(**TINY, drop_path_rate=0.5)
  params, _ = _init(model)
  x = jax.random.normal(jax.random.key(1), (16, 56, 56, 3))
  rngs = {"drop_path": jax.random.key(3)}
  forward = jax.jit(lambda p, x: model.apply(p, x, train=True, rngs=rngs)["x_prenorm"])
  mesh = parallel.make_mesh({"data": 8})
  with parallel.activation_sharding(mesh, parallel.DEFAULT_RULES):
    assert parallel.batch_shards() == 8
    sharded = jax.device_put(x, parallel.batch_sharding(mesh, ndim=4))
    hlo = forward.lower(params, sharded).compile().as_text()
    out = forward(params, sharded)
  for collective in ("all-gather(", "all-reduce(", "all-to-all(", "collective-permute("):
    assert collective not in hlo
  monkeypatch.setattr(parallel, "batch_shards", lambda: 8)
  np.testing.assert_allclose(out, forward(params, x), atol=1e-5)


def test_stochastic_depth_expected_update_is_the_full_residual():
  x = jax.random.normal(jax.random.key(0), (8, 5, 4))
  residual = lambda y: jnp.tanh(y) * 2.0
  keys = jax.random.split(jax.random.key(1), 4000)
  outs = jax.vmap(lambda k: stochastic_depth_residual(x, residual, 0.4, k))(keys)
  # Each sample is kept with probability 4/8 and then scaled by 8/4: mean update = residual, up to
  # sampling noise (std of the keep frequency ≈ 0.008, so 0.05 is a > 5-sigma bound).
  np.testing.assert_allclose(outs.mean(0) - x, residual(x), rtol=0.05, atol=1e-4)


@pytest.mark.slow
def test_scanned_blocks_equal_unrolled():
  """The same params (stacked), same outputs, gradients and stochastic-depth draws: scanning (here
  with remat, which must not change a thing either) is only how XLA compiles the blocks."""
  kwargs = dict(TINY, depth=4, num_register_tokens=4, drop_path_rate=0.5, drop_path_uniform=True)
  unrolled, scanned = ViT(**kwargs), ViT(**kwargs, scan_blocks=True, remat=True)
  params, x = _init(unrolled)
  stacked = stack_blocks(params)
  abstract = jax.eval_shape(scanned.init, jax.random.key(0), x)
  assert jax.tree.structure(nn.unbox(abstract)) == jax.tree.structure(stacked)
  # One vmapped init draws every block's params, each block its own.
  kernels = [params["params"][f"blocks_{i}"]["attn"]["qkv"]["kernel"] for i in range(4)]
  assert all(not np.allclose(kernels[0], k) for k in kernels[1:])
  rngs = {"drop_path": jax.random.key(3)}

  def loss(model, params):
    out = model.apply(params, x, train=True, rngs=rngs)
    return jnp.sum(out["x_norm_patchtokens"] ** 2) + jnp.sum(out["x_norm_clstoken"])

  want, want_grads = jax.jit(jax.value_and_grad(partial(loss, unrolled)))(params)
  got, got_grads = jax.jit(jax.value_and_grad(partial(loss, scanned)))(stacked)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(stack_blocks(want_grads))):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)

  # Inference paths: taken layers fill the scan's buffer; the last block's logits ride in its carry.
  def inference(model, params):
    return (model.apply(params, x, return_cls_attention=True),
            model.apply(params, x, [0, 2], return_class_token=True, method=ViT.get_intermediate_layers))

  want, got = jax.jit(partial(inference, unrolled))(params), jax.jit(partial(inference, scanned))(stacked)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_scanned_params_are_stacked_and_drawn_as_unrolled():
  """With scan_blocks the blocks' params live stacked on a leading `layers` axis (no stacking per
  forward); `stack_blocks`/`unstack_blocks` convert exactly, and both layouts draw the same init."""
  unrolled, scanned = ViT(**TINY), ViT(**TINY, scan_blocks=True)
  params, x = _init(unrolled)
  boxed = scanned.init(jax.random.key(0), x)
  assert {"blocks_0", "blocks_1"}.isdisjoint(boxed["params"])
  specs = nn.get_partition_spec(boxed)["params"]["blocks"]
  assert specs["attn"]["qkv"]["kernel"] == jax.sharding.PartitionSpec("layers", "embed", None, "heads", "kv")
  stacked = nn.unbox(boxed)
  assert all(p.shape[0] == TINY["depth"] for p in jax.tree.leaves(stacked["params"]["blocks"]))
  jax.tree.map(np.testing.assert_array_equal, stacked, stack_blocks(params))
  jax.tree.map(np.testing.assert_array_equal, unstack_blocks(stacked), params)
  out = scanned.apply(stacked, x, return_cls_attention=True)
  want = unrolled.apply(params, x, return_cls_attention=True)
  for key in ("x_prenorm", "cls_attention_logits"):
    np.testing.assert_allclose(out[key], want[key], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="unrolled layout"):
    stack_blocks(stacked)
  with pytest.raises(ValueError, match="scanned layout"):
    unstack_blocks(params)


def test_remat_policy_chooses_what_the_backward_keeps(capsys):
  x = jax.random.normal(jax.random.key(1), (1, 28, 28, 3))
  params = nn.unbox(jax.eval_shape(ViT(**TINY).init, jax.random.key(0), x))

  def residuals(**remat):  # one printed line per array the backward keeps
    loss = lambda p: jnp.sum(ViT(**TINY, **remat).apply(p, x)["x_prenorm"])
    print_saved_residuals(loss, params)
    return capsys.readouterr().out.splitlines()

  nothing, dots = residuals(remat=True), residuals(remat=True, remat_policy="dots_saveable")
  # Each block keeps its input only, or its matmul outputs too; without remat, everything.
  assert len(nothing) < len(dots) < len(residuals())
  with pytest.raises(ValueError, match="Unknown remat_policy 'dots'"):
    ViT(**TINY, remat=True, remat_policy="dots").init(jax.random.key(0), x)


def test_scanned_blocks_compile_one_block_and_need_one_drop_rate():
  x = jnp.zeros((1, 56, 56, 3))
  dots = {}
  for name, model in (("scanned", ViT(**TINY, scan_blocks=True)), ("one block", ViT(**TINY | {"depth": 1}))):
    hlo = jax.jit(model.apply).lower(nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x)), x).as_text()
    dots[name] = hlo.count("dot_general")
  assert TINY["depth"] > 1 and dots["scanned"] == dots["one block"]
  with pytest.raises(ValueError, match="scan_blocks needs the same stochastic-depth rate"):
    ViT(**TINY, drop_path_rate=0.2, scan_blocks=True).init(jax.random.key(0), x)


@pytest.mark.slow
def test_bf16_compute_keeps_fp32_params():
  model = ViT(**TINY, dtype=jnp.bfloat16)
  params, x = _init(model)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  out = model.apply(params, x)
  assert out["x_norm_clstoken"].dtype == jnp.bfloat16
  ref = ViT(**TINY).apply(params, x)["x_norm_clstoken"]
  np.testing.assert_allclose(out["x_norm_clstoken"].astype(jnp.float32), ref, atol=0.1)
