"""CLIP text encoder vs Hugging Face `CLIPTextModelWithProjection` (random weights)."""

import numpy as np
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from dinojax import convert


def _hf_model():
  torch.manual_seed(0)
  config = CLIPTextConfig(vocab_size=1000, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, projection_dim=64,
                          hidden_act="quick_gelu", eos_token_id=2)
  model = CLIPTextModelWithProjection(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.02)
  return model


@pytest.mark.slow
def test_parity_with_transformers():
  hf = _hf_model()
  model, params = convert.clip_text_from_state_dict({k: v.numpy() for k, v in hf.state_dict().items()},
                                                    num_heads=2)
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 998, size=(3, 20))
  lengths = [5, 12, 20]
  for row, n in zip(ids, lengths):
    row[n - 1] = 999  # end-of-text: the highest id, as in CLIP's vocabulary
    row[n:] = 0       # padding after it
  with torch.no_grad():
    ref = hf(input_ids=torch.from_numpy(ids))
  out = model.apply(params, ids)
  np.testing.assert_allclose(out["last_hidden_state"], ref.last_hidden_state.numpy(), atol=1e-4)
  np.testing.assert_allclose(out["text_embeds"], ref.text_embeds.numpy(), atol=1e-4)


@pytest.mark.slow
def test_padding_after_end_of_text_does_not_change_the_embedding():
  hf = _hf_model()
  model, params = convert.clip_text_from_state_dict({k: v.numpy() for k, v in hf.state_dict().items()},
                                                    num_heads=2)
  short = np.array([[5, 6, 7, 999]])
  padded = np.array([[5, 6, 7, 999, 0, 0, 0, 0]])
  np.testing.assert_allclose(model.apply(params, short)["text_embeds"],
                             model.apply(params, padded)["text_embeds"], atol=1e-6)


def test_too_long_input_is_an_error():
  hf = _hf_model()
  model, params = convert.clip_text_from_state_dict({k: v.numpy() for k, v in hf.state_dict().items()},
                                                    num_heads=2)
  with pytest.raises(ValueError, match="exceeds the context length 77"):
    model.apply(params, np.zeros((1, 78), np.int32))
