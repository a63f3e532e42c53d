"""The DINOv2 loss as the official code computes it on several GPUs, against NumPy restatements of its
per-GPU arithmetic (`SSLMetaArch.forward_backward`, the losses in `dinov2/loss/`, the all-reduce and
division by the GPU count in `train.py`): one official GPU per loss group. Also the default loss
group and the refusal of zero local crops."""

import jax
import numpy as np
import pytest

import jobs
from dinojax import config_defaults, parallel
from dinojax import student_teacher as st
from dinojax.losses import dino

rng = np.random.default_rng(0)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _cross_entropy(t, s, temp=0.1):
  return -(t * _log_softmax(s / temp)).sum(-1)


def _koleo(x):
  x = x / np.linalg.norm(x, axis=-1, keepdims=True)
  dots = x @ x.T
  np.fill_diagonal(dots, -1.0)
  return -np.log(np.linalg.norm(x - x[dots.argmax(-1)] + 1e-8, axis=-1) + 1e-8).mean()


def _one_gpu(s_global, s_local, t_cls, cls_tokens, s_patch, t_patch, masks, config):
  """One GPU's (loss it backpropagates, `loss_dict`) for its images, arrays indexed [image, crop]."""
  n, n_local = s_global.shape[0], s_local.shape[1]
  # n_global_crops_loss_terms + n_local_crops_loss_terms: (2 - 1)·2 + max(n_local·2, 1).
  pairs = 2 + max(2 * n_local, 1)
  # Global crops: each crop's student against the other crop's teacher, one mean over the 2n rows,
  # times 2 (both crops processed together).
  ce_global = np.concatenate([_cross_entropy(t_cls[:, 1 - v], s_global[:, v]) for v in range(2)])
  dino_global = ce_global.mean() * 2 / pairs
  dino_local = sum(_cross_entropy(t_cls[:, v], s_local[:, i]).mean()
                   for i in range(n_local) for v in range(2)) / pairs
  koleo = config.dino.koleo_weight * sum(_koleo(cls_tokens[:, v]) for v in range(2))
  # iBOT: each masked patch weighs 1 / (its crop's masked patches); summed, over the 2n crops,
  # then × 2 (crops together) × 1/2 (per global crop).
  ibot = sum(_cross_entropy(t_patch[i, v], s_patch[i, v])[masks[i, v]].sum() / max(masks[i, v].sum(), 1)
             for i in range(n) for v in range(2)) / (2 * n)
  loss = config.dino.loss_weight * (dino_local + dino_global) + koleo + config.ibot.loss_weight * ibot
  logged = {"dino_local_crops_loss": dino_local, "dino_global_crops_loss": dino_global,
            "koleo_loss": koleo / 2, "ibot_loss": ibot / 2}
  return loss, logged


def test_loss_and_logged_losses_are_the_official_ones_on_4_gpus():
  config = config_defaults.dinov2_ssl()
  config.crops.local_number = 2
  config.dino.loss_weight, config.ibot.loss_weight = 0.7, 1.3  # weights enter the loss, not the log
  b, k, d, p, gpus = 8, 16, 8, 6, 4
  s_global, s_local = rng.normal(size=(b, 2, k)), rng.normal(size=(b, 2, k))
  t_cls = np.exp(_log_softmax(rng.normal(size=(b, 2, k))))
  cls_tokens = rng.normal(size=(b, 2, d))
  s_patch, t_patch = rng.normal(size=(b, 2, p, k)), np.exp(_log_softmax(rng.normal(size=(b, 2, p, k))))
  masks = rng.random((b, 2, p)) < 0.4

  per_gpu = [_one_gpu(*(np.split(x, gpus)[g] for x in (s_global, s_local, t_cls, cls_tokens, s_patch,
                                                       t_patch, masks)), config) for g in range(gpus)]
  # DDP averages the GPUs' gradients; train.py logs each loss_dict value averaged over the GPUs and
  # their sum as total_loss.
  official_loss = np.mean([loss for loss, _ in per_gpu])
  official_log = {name: np.mean([log[name] for _, log in per_gpu]) for name in per_gpu[0][1]}

  @jax.jit
  def losses(s_global, s_local, t_cls, cls_tokens, s_patch, t_patch, masks):
    # The trainer's layout: crops sample-major, merged into the batch.
    terms = st.dino_koleo_losses(config, s_global.reshape(2 * b, k), s_local.reshape(2 * b, k), t_cls,
                                  cls_tokens.reshape(2 * b, d), loss_group=b // gpus)
    terms["loss_ibot"] = dino.ibot_loss(s_patch.reshape(2 * b, p, k), t_patch.reshape(2 * b, p, k),
                                        dino.masked_patch_weights(masks.reshape(2 * b, p)), 2 * b)
    return st.combine_losses(config, terms)

  f32 = lambda x: np.asarray(x, np.float32)
  loss, logged = losses(*map(f32, (s_global, s_local, t_cls, cls_tokens, s_patch, t_patch)), masks)

  np.testing.assert_allclose(loss, official_loss, rtol=1e-5)
  for name, official in (("loss_dino_local", "dino_local_crops_loss"),
                         ("loss_dino_global", "dino_global_crops_loss"),
                         ("loss_koleo", "koleo_loss"), ("loss_ibot", "ibot_loss")):
    np.testing.assert_allclose(logged[name], official_log[official], rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(logged["total_loss"], sum(official_log.values()), rtol=1e-5)


@pytest.mark.parametrize("mesh_axes,loss_group", [({"data": 8}, 2), ({"data": 2, "fsdp": 4}, 4)],
                         ids=["group_per_device", "group_over_2_devices"])
def test_ibot_centre_on_8_devices_is_the_per_gpu_update(mesh_axes, loss_group):
  # 16 images (2 per device), their 32 global crops of 6 patches; masked patches gathered per device.
  config = config_defaults.dinov2_ssl()
  mesh = parallel.make_mesh(mesh_axes)
  b, p, k = 16, 6, 8
  masks = rng.random((2 * b, p)) < 0.4
  masks[::4, 0] = True  # every official GPU has masked patches (as the official masking ensures)
  cls_logits = rng.normal(size=(2 * b, k)).astype(np.float32)
  patch_logits = rng.normal(size=(2 * b, p, k)).astype(np.float32)
  center = {"dino": rng.normal(size=(1, k)).astype(np.float32),
            "ibot": rng.normal(size=(1, k)).astype(np.float32)}

  def new_center(masks, cls_logits, patch_logits, center):
    index, valid = st.masked_patch_index(masks, groups=8, size=4 * p)
    groups = st.masked_patch_groups(masks, index, loss_group)
    *_, center = st.teacher_targets(config, cls_logits, st.take_masked(patch_logits, index), center,
                                     0.04, valid.reshape(-1), groups, b // loss_group)
    return center

  shard = lambda x: jax.device_put(x, parallel.batch_sharding(mesh, ndim=x.ndim))
  got = jax.jit(new_center)(shard(masks), shard(cls_logits), shard(patch_logits), center)

  # Official: each GPU's mean over its masked patches, averaged over the GPUs (`reduce_center_update`);
  # the CLS centre is the mean over all crops (every GPU holds as many).
  gpu_means = [patch_logits[g][masks[g]].mean(0) for g in np.split(np.arange(2 * b), b // loss_group)]
  np.testing.assert_allclose(got["ibot"], 0.9 * center["ibot"] + 0.1 * np.mean(gpu_means, 0), rtol=1e-5)
  np.testing.assert_allclose(got["dino"], 0.9 * center["dino"] + 0.1 * cls_logits.mean(0), rtol=1e-5)


def test_default_loss_group_is_each_devices_batch_and_must_divide_the_batch():
  config = jobs.config("dinov2_vits14.py:tiny")
  config.batch_size = 32
  rules = parallel.DEFAULT_RULES
  assert st.loss_group(config, parallel.make_mesh({"data": 8}), rules) == 4
  assert st.loss_group(config, parallel.make_mesh({"data": 2, "model": 4}), rules) == 16
  config.loss_group = 16
  assert st.loss_group(config, parallel.make_mesh({"data": 8}), rules) == 16
  config.loss_group = 12
  with pytest.raises(ValueError, match="loss_group=12 does not divide batch_size=32"):
    st.loss_group(config, parallel.make_mesh({"data": 8}), rules)


def test_zero_local_crops_are_refused():
  # The official collate stacks an empty list of local crops: no official run, so no loss, to follow.
  config = jobs.config("dinov2_vits14.py:tiny")
  config.crops.local_number = 0
  with pytest.raises(ValueError, match="crops.local_number=0"):
    st.multi_crop_data(config, parallel.make_mesh({"data": 8}), parallel.DEFAULT_RULES)
