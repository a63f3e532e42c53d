"""Linear classifiers on DINOv2 features: parity with a PyTorch composition of `transformers`' DINOv2
(the released `_lc` models' forward), and loading heads in the released file layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from dinojax import convert, hub
from dinojax.models.classifier import LinearClassifier


def _hf_backbone():
  torch.manual_seed(0)
  model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
      hidden_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=56, patch_size=14,
      num_register_tokens=4, layerscale_value=0.5))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.02)
  return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("blocks", [1, 4])
def test_logits_match_the_released_classifier_forward(blocks):
  hf = _hf_backbone()
  head = torch.nn.Linear((blocks + 1) * 64, 10)
  x = np.random.default_rng(0).normal(size=(2, 56, 56, 3)).astype(np.float32)
  with torch.no_grad():  # the official wrapper: last blocks' normed class tokens, then the mean patch
    states = hf(torch.from_numpy(x).permute(0, 3, 1, 2), output_hidden_states=True).hidden_states
    normed = [hf.layernorm(h) for h in states[-blocks:]]
    reference = head(torch.cat([h[:, 0] for h in normed] + [normed[-1][:, 5:].mean(dim=1)], dim=1)).numpy()

  backbone, params = convert.from_state_dict({k: v.numpy() for k, v in hf.state_dict().items()}, num_heads=2)
  model = LinearClassifier(backbone, blocks, num_classes=10)
  head_params = {"kernel": jnp.asarray(head.weight.detach().numpy().T), "bias": jnp.asarray(head.bias.detach().numpy())}
  logits = model.apply({"params": {"backbone": params["params"], "head": head_params}}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-4)


@pytest.mark.slow
def test_hub_classifier_loads_a_released_head_file(tmp_path):
  head = torch.nn.Linear(5 * 384, 1000)
  torch.save(head.state_dict(), tmp_path / "dinov2_vits14_reg4_linear4_head.pth")
  model, params = hub.dinov2_classifier("vits14_reg", head=tmp_path / "dinov2_vits14_reg4_linear4_head.pth")
  np.testing.assert_array_equal(params["params"]["head"]["kernel"], head.weight.detach().numpy().T)
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 28, 28, 3)), jnp.float32)
  logits = jax.jit(model.apply)(params, images)
  assert logits.shape == (2, 1000)
  outputs = model.backbone.apply({"params": params["params"]["backbone"]}, images, 4, return_class_token=True,
                                 method=model.backbone.get_intermediate_layers)
  features = jnp.concatenate([c for _, c in outputs] + [outputs[-1][0].mean(axis=1)], axis=-1)
  np.testing.assert_allclose(logits, features @ params["params"]["head"]["kernel"] + params["params"]["head"]["bias"],
                             rtol=1e-4, atol=1e-4)

  # A 4-block head where a 1-block one (2 × 384 inputs) belongs; a file without the bias.
  released = convert.load_state_dict(tmp_path / "dinov2_vits14_reg4_linear4_head.pth")
  with pytest.raises(ValueError, match=r"\(1000, 1920\); this backbone and head input need \(classes, 768\)"):
    convert.classifier_head_from_state_dict(released, 2 * 384)
  torch.save({"weight": head.weight}, tmp_path / "no_bias.pth")  # a live parameter, as saved by hand
  with pytest.raises(KeyError, match="lacks \\['bias'\\]"):
    convert.classifier_head_from_state_dict(convert.load_state_dict(tmp_path / "no_bias.pth"), 1920)
