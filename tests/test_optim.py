import jax
import jax.numpy as jnp
import numpy as np
import torch

from dinojax import optim


def _official_cosine(base, final, total, warmup=0, start_warmup=0.0, freeze=0):
  """The official CosineScheduler, transcribed with NumPy."""
  warm = np.linspace(start_warmup, base, warmup)
  iters = np.arange(total - warmup - freeze)
  cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
  return np.concatenate([np.zeros(freeze), warm, cos])


def test_cosine_schedule_matches_official():
  ref = _official_cosine(1.0, 0.1, 40, warmup=7, start_warmup=0.2, freeze=3)
  ours = np.asarray(optim.cosine_schedule(np.arange(45), 1.0, 0.1, 40, 7, 0.2, 3))
  np.testing.assert_allclose(ours[:40], ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours[40:], 0.1)


def _params():
  z = np.zeros((2,), np.float32)
  return {"backbone": {"cls_token": z, "patch_embed": {"kernel": z, "bias": z},
                       "blocks_0": {"attn": {"qkv": {"kernel": z}}, "norm1": {"scale": z}, "ls1": {"gamma": z}},
                       "blocks_1": {"mlp": {"fc1": {"kernel": z}}}, "norm": {"scale": z}},
          "dino_head": {"mlp_0": {"kernel": z}, "last_layer_v": z}}


def test_layerwise_lr_and_weight_decay_multipliers():
  lr = optim.lr_multipliers(_params(), num_blocks=2, layerwise_decay=0.5, patch_embed_lr_mult=0.2)
  b = lr["backbone"]
  assert b["cls_token"] == 0.5 ** 3 and b["patch_embed"]["kernel"] == 0.5 ** 3 * 0.2
  assert b["blocks_0"]["attn"]["qkv"]["kernel"] == 0.5 ** 2 and b["blocks_1"]["mlp"]["fc1"]["kernel"] == 0.5
  assert b["norm"]["scale"] == 1.0 and lr["dino_head"]["mlp_0"]["kernel"] == 1.0
  # Scanned blocks (stacked on a leading axis): each block's multiplier, broadcasting over its param.
  stacked = {"backbone": {"cls_token": np.zeros((2,)), "blocks": {"attn": {"qkv": {"kernel": np.zeros((2, 4, 3))}}}}}
  scanned = optim.lr_multipliers(stacked, num_blocks=2, layerwise_decay=0.5, patch_embed_lr_mult=0.2)
  qkv = scanned["backbone"]["blocks"]["attn"]["qkv"]["kernel"]
  assert qkv.shape == (2, 1, 1)
  np.testing.assert_array_equal(qkv.ravel(), [b["blocks_0"]["attn"]["qkv"]["kernel"], 0.5])
  assert scanned["backbone"]["cls_token"] == b["cls_token"]
  wd = optim.wd_multipliers(_params())
  assert wd["backbone"]["patch_embed"]["bias"] == 0 and wd["backbone"]["blocks_0"]["norm1"]["scale"] == 0
  assert wd["backbone"]["blocks_0"]["ls1"]["gamma"] == 0 and wd["backbone"]["cls_token"] == 1
  assert optim.last_layer_mask(_params())["dino_head"]["last_layer_v"]
  assert not optim.last_layer_mask(_params())["dino_head"]["mlp_0"]["kernel"]


def test_adamw_matches_torch_param_groups():
  rng = np.random.default_rng(0)
  p0 = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32),
        "last_layer": rng.normal(size=(2,)).astype(np.float32)}
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in p0.items()} for _ in range(3)]
  lr_mult, wd_mult = {"a": 0.5, "b": 1.0, "last_layer": 1.0}, {"a": 1.0, "b": 0.0, "last_layer": 1.0}
  is_last = {"a": False, "b": False, "last_layer": True}
  lrs, wds, last_lrs = [0.1, 0.05, 0.02], [0.04, 0.1, 0.2], [0.0, 0.0, 0.03]

  tp = {k: torch.tensor(v, requires_grad=True) for k, v in p0.items()}
  opt = torch.optim.AdamW([{"params": [tp[k]], "name": k} for k in tp], betas=(0.9, 0.999), eps=1e-8)
  params = {k: jnp.asarray(v) for k, v in p0.items()}
  state = optim.adamw(0.0, 0.0, 0.0, lr_mult, wd_mult, is_last).init(params)
  for g, lr, wd, last_lr in zip(grads, lrs, wds, last_lrs):
    for group in opt.param_groups:
      k = group["name"]
      group["lr"] = (last_lr if is_last[k] else lr) * lr_mult[k]
      group["weight_decay"] = wd * wd_mult[k]
      tp[k].grad = torch.tensor(g[k])
    opt.step()
    tx = optim.adamw(lr, wd, last_lr, lr_mult, wd_mult, is_last)
    updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  for k in p0:
    np.testing.assert_allclose(params[k], tp[k].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_clip_by_module_norm_matches_torch():
  rng = np.random.default_rng(1)
  grads = {"backbone": {"w": rng.normal(size=(5, 5)).astype(np.float32) * 3},
           "head": {"w": rng.normal(size=(3,)).astype(np.float32) * 0.1}}
  clipped, norms = optim.clip_by_module_norm(jax.tree.map(jnp.asarray, grads), 3.0)
  for k, g in grads.items():
    t = torch.tensor(g["w"], requires_grad=True)
    t.grad = torch.tensor(g["w"])
    norm = torch.nn.utils.clip_grad_norm_([t], 3.0)
    np.testing.assert_allclose(norms[k], norm.item(), rtol=1e-5)
    np.testing.assert_allclose(clipped[k]["w"], t.grad.numpy(), rtol=1e-5)
