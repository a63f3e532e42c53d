import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dinojax import convert, parallel
from dinojax.losses import talk2dino as t2d_loss
from dinojax.models import talk2dino

SHARED = pathlib.Path(__file__).resolve().parents[3] / "shared" / "weights"
RELEASED = SHARED / "talk2dino_vitb_mlp_infonce.pth"


@pytest.mark.skipif(not RELEASED.exists(), reason=f"reference weights not found at {SHARED}")
def test_released_projection_matches_torch():
  model, params = convert.talk2dino_from_checkpoint(RELEASED, RELEASED.with_suffix(".yaml"))
  assert (model.dino_dim, model.hidden_layers, model.act) == (768, 1, "tanh")
  sd = torch.load(RELEASED, map_location="cpu", weights_only=True)
  linear, hidden = torch.nn.Linear(512, 768), torch.nn.Linear(768, 768)
  linear.load_state_dict({"weight": sd["linear_layer.weight"], "bias": sd["linear_layer.bias"]})
  hidden.load_state_dict({"weight": sd["hidden_layers.0.weight"], "bias": sd["hidden_layers.0.bias"]})
  text = np.random.default_rng(0).normal(size=(4, 512)).astype(np.float32)
  with torch.no_grad():
    ref = hidden(torch.tanh(linear(torch.from_numpy(text)))).numpy()
  np.testing.assert_allclose(model.apply(params, text), ref, atol=1e-5)


def test_loader_errors_name_the_key():
  rng = np.random.default_rng(0)
  sd = {"linear_layer.weight": rng.normal(size=(8, 4)), "linear_layer.bias": rng.normal(size=8),
        "linear_layer2.weight": rng.normal(size=(8, 8)), "linear_layer2.bias": rng.normal(size=8)}
  model, params = convert.talk2dino_from_state_dict(sd)  # old naming of the hidden layer
  assert model.hidden_layers == 1 and "hidden_layers_0" in params["params"]
  with pytest.raises(KeyError, match="linear_layer.bias"):
    convert.talk2dino_from_state_dict({k: v for k, v in sd.items() if k != "linear_layer.bias"})
  with pytest.raises(ValueError, match="does not use"):
    convert.talk2dino_from_state_dict({**sd, "logit_scale": np.zeros(())})


def _np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_head_pooled_embeddings_and_similarity_match_numpy():
  rng = np.random.default_rng(1)
  b, h, n, d, g = 3, 4, 6, 8, 5  # g global tokens: CLS + 4 registers
  patches = rng.normal(size=(b, n, d)).astype(np.float32)
  logits = rng.normal(size=(b, h, g + n, g + n))
  heads = np.asarray(talk2dino.head_pooled_embeddings(patches, logits[:, :, 0].astype(np.float32), g))
  # The official way: the CLS row of the full attention, restricted to the patches, renormalised.
  attention = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  cls_to_patches = attention[:, :, 0, g:]
  weights = cls_to_patches / cls_to_patches.sum(-1, keepdims=True)
  ref_heads = (patches[:, None] * weights[..., None]).mean(axis=2)
  np.testing.assert_allclose(heads, ref_heads, rtol=1e-5, atol=1e-6)

  text = rng.normal(size=(b, d)).astype(np.float32)
  t, v = _np_normalize(text), _np_normalize(ref_heads)
  best = np.stack([v[i, np.argmax(v[i] @ t[i])] for i in range(b)])
  np.testing.assert_allclose(t2d_loss.head_pooled_similarity(text, heads), t @ best.T, rtol=1e-5, atol=1e-6)


def test_infonce_matches_numpy_and_is_the_same_on_8_devices():
  rng = np.random.default_rng(2)
  b, h, d = 16, 3, 8
  text = rng.normal(size=(b, d)).astype(np.float32)
  heads = rng.normal(size=(b, h, d)).astype(np.float32)
  scale = np.log(1 / 0.07)
  sims = np.asarray(t2d_loss.head_pooled_similarity(text, heads))
  logits = np.exp(scale) * sims
  lsm_rows = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  lsm_cols = logits - np.log(np.exp(logits).sum(0, keepdims=True))
  ref = (-np.diag(lsm_rows).mean() - np.diag(lsm_cols).mean()) / 2 / b ** 2
  loss = lambda t, hd: t2d_loss.infonce_loss(t2d_loss.head_pooled_similarity(t, hd), jnp.asarray(scale))
  np.testing.assert_allclose(loss(text, heads), ref, rtol=1e-5)
  mesh = parallel.make_mesh({"data": 8})
  spec = lambda nd: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", *[None] * (nd - 1)))
  sharded = jax.jit(loss)(jax.device_put(text, spec(2)), jax.device_put(heads, spec(3)))
  np.testing.assert_allclose(sharded, ref, rtol=1e-5)
