"""The text transformer with dino.txt's options (CLIP's are checked against `transformers` in
test_clip_text.py): padding never changes the embedding, pooling reads the right tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinojax.models.text import TextTransformer, pool_tokens

PAD, BOS, EOS = 0, 2, 3
CAPTIONS = [[BOS, 7, 8, 9, EOS], [BOS, 11, EOS]]


def _ids(length):
  out = np.full((len(CAPTIONS), length), PAD, np.int32)
  for row, caption in zip(out, CAPTIONS):
    row[:len(caption)] = caption
  return jnp.asarray(out)


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["eot", "last", "mean"])
def test_padding_does_not_change_the_embedding(pooling):
  model = TextTransformer(vocab_size=32, context_length=16, width=32, depth=2, num_heads=4,
                          embed_dim=24, pooling=pooling, eot_id=EOS, pad_id=PAD)
  params = model.init(jax.random.key(0), _ids(16))
  short, long = (model.apply(params, _ids(n))["text_embeds"] for n in (6, 16))
  assert short.shape == (2, 24)
  np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-6)
  # Changing what sits in the padding slots changes nothing either.
  noisy = _ids(16).at[:, 12:].set(5)
  if pooling == "eot":  # "last" and "mean" read the pad id to know what is padding
    np.testing.assert_allclose(model.apply(params, noisy)["text_embeds"], long, rtol=1e-5, atol=1e-6)
  # ...while a different caption does change it.
  other = _ids(16).at[0, 2].set(12)
  assert not np.allclose(model.apply(params, other)["text_embeds"][0], long[0], atol=1e-4)


def test_pooling_reads_the_expected_tokens():
  x = jnp.arange(2 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 1)
  ids = _ids(6)
  np.testing.assert_array_equal(pool_tokens(x, ids, "eot", EOS, PAD)[:, 0], [4, 8])
  np.testing.assert_array_equal(pool_tokens(x, ids, "last", EOS, PAD)[:, 0], [4, 8])
  np.testing.assert_allclose(pool_tokens(x, ids, "mean", EOS, PAD)[:, 0], [2, 7])
  np.testing.assert_array_equal(pool_tokens(x, ids, "argmax", EOS, PAD)[:, 0], [3, 7])  # ids 9 and 11


@pytest.mark.slow
def test_no_projection_keeps_the_width_and_bad_settings_are_named():
  model = TextTransformer(vocab_size=32, context_length=8, width=16, depth=1, num_heads=2, eot_id=EOS)
  params = model.init(jax.random.key(0), _ids(8))
  assert model.apply(params, _ids(8))["text_embeds"].shape == (2, 16)
  with pytest.raises(ValueError, match="exceeds the context length"):
    model.apply(params, jnp.zeros((2, 9), jnp.int32))
  with pytest.raises(ValueError, match="Unknown text pooling"):
    TextTransformer(vocab_size=32, context_length=8, width=16, depth=1, num_heads=2,
                    pooling="max").init(jax.random.key(0), _ids(8))
