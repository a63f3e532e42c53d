"""The SSL train step alone, in process: built from the tiny config by `ssl.make_train_step` and called
once on one batch and one state, with a schedule past the warmup but before the last layer thaws."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import jobs
from dinojax import backbones, parallel
from dinojax import student_teacher as st
from dinojax.data import masking
from dinojax.trainers import ssl


def test_one_step_updates_the_student_and_moves_the_teacher_by_the_momentum():
  config = jobs.config("dinov2_vits14.py:tiny")
  config.model.depth = 1
  config.batch_size = b = 4
  config.optim.freeze_last_layer_epochs = 2  # steps 0-49: the prototypes stay put
  mesh, rules = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1]), parallel.DEFAULT_RULES
  backbone = backbones.build_vit(config.model)
  heads = st.build_heads(config.dino.head, config.ibot.head, config.ibot.separate_head, backbone.dtype)
  params, shardings = parallel.init_sharded(st.model_init(backbone, heads, config.crops.global_size),
                                            mesh, rules, jax.random.key(0))
  make_tx = st.make_optimizer(config, params, backbone.depth)
  state = jax.jit(functools.partial(st.init_state, config, make_tx, param_shardings=shardings,
                                    ema_key="teacher"))(params)
  rng = np.random.default_rng(0)
  grid = config.crops.global_size // config.model.patch_size
  masks, _ = masking.sample_masks(rng, 2 * b, (grid, grid), tuple(config.ibot.mask_ratio),
                                  config.ibot.mask_probability)
  batch = {"global_crops": rng.normal(size=(b, 2, 32, 32, 3)).astype(np.float32),
           "local_crops": rng.normal(size=(b, 2, 16, 16, 3)).astype(np.float32),
           "masks": masks.reshape(b, 2, grid * grid)}
  # The schedule is an input: step 30's, past the 25-step warmup, the last layer still frozen.
  schedule = st.schedules(config, jnp.int32(30))
  assert float(schedule["lr"]) > 0 and float(schedule["last_layer_lr"]) == 0

  train_step = jax.jit(ssl.make_train_step(config, backbone, heads, make_tx, mesh, rules))
  new, metrics = train_step(state, batch, schedule)

  metrics = jax.device_get(metrics)
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  assert metrics["lr"] == schedule["lr"] and metrics["masked_patches"] == masks.sum()
  assert int(new["step"]) == 1
  changed = jax.tree_util.tree_leaves_with_path(
      jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params, new["params"]))
  frozen = {jax.tree_util.keystr(path): moved for path, moved in changed if "last_layer" in str(path)}
  assert frozen and not any(frozen.values()), frozen
  assert np.mean([moved for path, moved in changed if "last_layer" not in str(path)]) > 0.9
  # The EMA teacher, which started as the student: m · old + (1 - m) · updated student.
  m = float(schedule["momentum"])
  assert 0.98 <= m < 1
  for before, after, teacher in zip(*map(jax.tree.leaves, (params, new["params"], new["teacher"]))):
    np.testing.assert_allclose(teacher, m * np.asarray(before) + (1 - m) * np.asarray(after),
                               rtol=1e-6, atol=1e-7)
  assert float(jnp.abs(new["center"]["dino"]).sum()) > 0  # the softmax centre moved off zero
