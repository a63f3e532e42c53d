"""What each device holds and gathers: masked patches grouped per device (the default mask group,
the per-group gather, a sharded step that gathers them without communicating), and under FSDP a
shard of the whole training state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jobs
from dinojax import backbones, parallel
from dinojax import student_teacher as st


def test_default_mask_group_is_each_devices_batch():
  config = jobs.config("dinov2_vits14.py:tiny")
  config.batch_size = 32
  rules = parallel.DEFAULT_RULES
  assert st.mask_group(config, parallel.make_mesh({"data": 8}), rules) == 4
  assert st.mask_group(config, parallel.make_mesh({"data": 2, "model": 4}), rules) == 16
  config.batch_size = 12  # does not split over 8 devices: one group per host
  assert st.mask_group(config, parallel.make_mesh({"data": 8}), rules) == 12
  config.ibot.mask_group = 6
  assert st.mask_group(config, parallel.make_mesh({"data": 8}), rules) == 6


def test_masked_patches_are_gathered_group_by_group():
  rng = np.random.default_rng(0)
  masks = rng.random((8, 5)) < 0.4  # 2b = 8 crops of 5 patches, in 2 groups of 4 crops
  patches = rng.normal(size=(8, 5, 3)).astype(np.float32)
  index, valid = st.masked_patch_index(jnp.asarray(masks), groups=2, size=12)
  assert index.shape == valid.shape == (2, 12)
  gathered = np.asarray(st.take_masked(jnp.asarray(patches), index)).reshape(2, 12, 3)
  for g in range(2):
    expected = patches[4 * g:4 * g + 4][masks[4 * g:4 * g + 4]]
    assert int(valid[g].sum()) == len(expected)
    np.testing.assert_array_equal(gathered[g][np.asarray(valid[g])], expected)


def test_sharded_gather_stays_on_each_device():
  mesh = parallel.make_mesh({"data": 8})
  masks = jax.random.bernoulli(jax.random.key(0), 0.3, (16, 6))
  patches = jax.random.normal(jax.random.key(1), (16, 6, 4))

  def masked_sum(patches, masks):
    index, valid = st.masked_patch_index(masks, groups=8, size=12)
    return jnp.sum(st.take_masked(patches, index) * valid.reshape(-1, 1), axis=0)

  sharding = parallel.batch_sharding(mesh, ndim=2)
  step = jax.jit(masked_sum, in_shardings=(parallel.batch_sharding(mesh, ndim=3), sharding))
  hlo = step.lower(patches, masks).compile().as_text()
  # Only the final sum over the batch communicates.
  assert "all-gather(" not in hlo and "all-to-all(" not in hlo and "collective-permute(" not in hlo
  np.testing.assert_allclose(step(patches, masks), jnp.sum(patches * masks[..., None], axis=(0, 1)),
                             rtol=1e-5)


@pytest.mark.slow
def test_fsdp_shards_the_whole_state_heads_and_adam_moments_included():
  config = jobs.config("dinov2_vits14.py:tiny")
  mesh = parallel.make_mesh({"fsdp": 8})
  rules = parallel.DEFAULT_RULES
  backbone = backbones.build_vit(config.model)
  heads = st.build_heads(config.dino.head, config.ibot.head, True, backbone.dtype)
  params, shardings = parallel.init_sharded(st.model_init(backbone, heads, config.crops.global_size),
                                            mesh, rules, jax.random.key(0))
  make_tx = st.make_optimizer(config, params, backbone.depth)
  state = jax.jit(lambda p: st.init_state(config, make_tx, p, shardings, "teacher"))(params)
  for name in ("dino_head", "ibot_head"):
    assert state["params"][name]["last_layer_v"].sharding.spec[0] == "fsdp"
  # Adam's two moments: each sharded as its parameter, so a device holds ~1/8 of them.
  mu, nu = state["opt"][0].mu, state["opt"][0].nu
  for moments in (mu, nu):
    assert all(jax.tree.leaves(jax.tree.map(lambda m, p: m.sharding.is_equivalent_to(p.sharding, p.ndim),
                                            moments, params)))
  for tree in (params, state["teacher"], mu, nu):
    assert parallel.sharded_fraction(tree) < 0.15
