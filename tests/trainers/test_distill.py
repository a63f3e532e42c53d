"""DINOv2 distillation: the teacher's heads convert from the official PyTorch layout (checked against a
torch reference), the frozen teacher loads from an SSL run or a training checkpoint and never changes,
the student's loss falls, a killed run resumes exactly, and 8 devices give the 1-device losses."""

import copy
import functools
import re
import subprocess
import threading
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

import jobs
from dinojax import backbones, checkpoint, config_args, convert, loop, parallel
from dinojax import student_teacher as st
from dinojax.trainers import distill

CONFIG_FILE = jobs.REPO / "configs/distill_vitg14_to_vits14.py"
# Small enough for CI: 2-block teacher (96 wide) and student (48 wide), 16 images a step; KoLeo in
# groups of 2 images on 1 device as on 8.
SMALL = {"model.depth": 2, "teacher.model.depth": 2, "batch_size": 16, "eval.batch_size": 200,
         "log_every": 1, "data.threads": 1, "total_steps": 24, "checkpoint.every": 8, "eval.every": 0,
         "loss_group": 2}


def load_config(arg="tiny", **overrides):
  config = config_args.load_config(CONFIG_FILE if arg is None else f"{CONFIG_FILE}:{arg}")
  return config_args.override(config, overrides)


# ---------------------------------------------------------------------------------------------------
# The official head, written from its description (dinov2/layers/dino_head.py, use_bn=False)
# ---------------------------------------------------------------------------------------------------
class TorchDINOHead(torch.nn.Module):
  """Linear layers with GELUs between (`mlp`), L2 normalisation, weight-normalised prototypes."""

  def __init__(self, in_dim, out_dim, nlayers, hidden_dim, bottleneck_dim, parametrization=False):
    super().__init__()
    dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
    layers = []
    for i in range(nlayers):
      layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
      if i < nlayers - 1:
        layers.append(torch.nn.GELU())
    self.mlp = torch.nn.Sequential(*layers) if nlayers > 1 else layers[0]
    last = torch.nn.Linear(bottleneck_dim, out_dim, bias=False)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # the old weight_norm is deprecated, but it is what DINOv2 saved
      self.last_layer = (torch.nn.utils.parametrizations.weight_norm(last) if parametrization
                         else torch.nn.utils.weight_norm(last))
    with torch.no_grad():  # g away from 1, so a mix-up of g and ‖v‖ shows
      for name, p in self.last_layer.named_parameters():
        if name in ("weight_g", "parametrizations.weight.original0"):
          p.uniform_(0.5, 2.0)

  def forward(self, x):
    return self.last_layer(torch.nn.functional.normalize(self.mlp(x), dim=-1, p=2, eps=1e-12))


def _torch_state(module, prefix):
  return {prefix + k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("nlayers,parametrization", [(3, False), (1, False), (2, True)],
                         ids=["3layers", "1layer", "parametrizations"])
def test_head_conversion_matches_torch(nlayers, parametrization):
  torch.manual_seed(0)
  reference = TorchDINOHead(24, 40, nlayers, 32, 16, parametrization).eval()
  head, params = convert.dino_head_from_state_dict(_torch_state(reference, "dino_head."), "dino_head.")
  assert (head.out_dim, head.nlayers, head.bottleneck_dim) == (40, nlayers, 16)
  x = np.random.default_rng(0).normal(size=(5, 24)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(np.asarray(head.apply(params, x)), expected, rtol=1e-5, atol=1e-6)


def _random_params(abstract, seed):
  """A ViT-like init without compiling one: LayerNorm scales and LayerScale 1, biases 0, weights
  N(0, 0.02) (NumPy, from the shapes of `abstract`)."""
  rng = np.random.default_rng(seed)

  def init(path, x):
    name = jax.tree_util.keystr(path)
    if "'scale'" in name or "'gamma'" in name:
      return np.ones(x.shape, np.float32)
    if "'bias'" in name:
      return np.zeros(x.shape, np.float32)
    return rng.normal(0.0, 0.02, x.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(init, nn.unbox(abstract))


@functools.lru_cache(maxsize=None)
def _tiny_teacher():
  """An official-layout training checkpoint (`model` with `teacher.*` keys) of a tiny teacher: a
  dinojax ViT exported to the official naming, torch reference heads, and the student's keys."""
  config = load_config(**SMALL)
  backbone = backbones.build_vit(config.teacher.model)
  backbone_params = _random_params(
      jax.eval_shape(backbone.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"], 1)
  torch.manual_seed(1)
  prototypes = config.dino.head.prototypes  # the student must predict the teacher's prototypes
  heads = {name: TorchDINOHead(96, prototypes, 3, 256, 64).eval() for name in ("dino_head", "ibot_head")}
  sd = {f"teacher.backbone.{k}": v for k, v in convert.params_to_state_dict(backbone_params).items()}
  for name, module in heads.items():
    sd.update(_torch_state(module, f"teacher.{name}."))
  sd.update({"student." + k[len("teacher."):]: v for k, v in sd.items()})  # a training run has both
  return config, backbone_params, heads, sd


def _tiny_teacher_state_dict():
  config, backbone_params, heads, sd = _tiny_teacher()
  return copy.deepcopy(config), backbone_params, heads, dict(sd)


def _save_pth(sd, path):
  torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, "iteration": 7}, path)


def test_teacher_loads_from_an_official_training_checkpoint(tmp_path):
  config, backbone_params, heads, sd = _tiny_teacher_state_dict()
  _save_pth(sd, tmp_path / "model_0000007.pth")
  config.teacher.checkpoint = str(tmp_path / "model_0000007.pth")
  mesh, rules = loop.make_mesh(config)
  backbone, t_heads, params, source = distill.load_teacher(config, mesh, rules)
  assert source.startswith("checkpoint:") and t_heads.separate
  assert backbone.embed_dim == 96 and backbone.depth == 2 and backbone.patch_size == 4
  for x, y in zip(jax.tree.leaves(backbone_params), jax.tree.leaves(params["backbone"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  tokens = np.random.default_rng(0).normal(size=(6, 96)).astype(np.float32)
  cls_logits, patch_logits = t_heads(params, tokens[:2], tokens[2:])
  with torch.no_grad():
    np.testing.assert_allclose(cls_logits, heads["dino_head"](torch.from_numpy(tokens[:2])).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(patch_logits, heads["ibot_head"](torch.from_numpy(tokens[2:])).numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["teacher.dino_head.last_layer.weight_g", "teacher.ibot_head.mlp.2.bias",
                                 "teacher.backbone.norm.weight"])
def test_a_missing_teacher_key_is_named(tmp_path, key):
  *_, sd = _tiny_teacher_state_dict()
  del sd[key]
  _save_pth(sd, tmp_path / "teacher.pth")
  with pytest.raises(KeyError, match=re.escape(f"missing key '{key}'")):
    convert.teacher_from_checkpoint(tmp_path / "teacher.pth")


def test_teacher_loads_from_an_ssl_run(tmp_path):
  config = load_config(**SMALL)
  mesh, rules = loop.make_mesh(config)
  backbone = backbones.build_vit(config.teacher.model)
  heads = st.build_heads(config.teacher.dino_head, config.teacher.ibot_head, False, backbone.dtype)
  abstract = jax.eval_shape(st.model_init(backbone, heads, 32), jax.random.key(0))
  shardings = parallel.logical_to_shardings(abstract, mesh, rules)
  student, ema = (parallel.to_device(_random_params(abstract, seed), shardings) for seed in (3, 4))
  state = {"params": student, "teacher": ema, "opt": {"mu": student}, "step": jnp.int32(5)}
  mgr = checkpoint.manager(tmp_path / "ssl" / "checkpoints")
  checkpoint.save(mgr, 5, state, {"step": 5}, force=True)
  mgr.wait_until_finished()

  config.teacher.workdir = str(tmp_path / "ssl")
  _, t_heads, params, source = distill.load_teacher(config, mesh, rules)
  assert source.endswith("@5") and not t_heads.separate and set(params) == {"backbone", "dino_head"}
  for x, y in zip(jax.tree.leaves(ema), jax.tree.leaves(params)):  # the EMA teacher, not the student
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  config.teacher.model.embed_dim = 64  # another architecture than the run's
  with pytest.raises(ValueError, match=r"Shape mismatch for \['teacher'\]\['backbone'\]"):
    distill.load_teacher(config, mesh, rules)
  config.teacher.workdir = str(tmp_path / "nothing_here")
  with pytest.raises(FileNotFoundError, match="nothing_here"):
    distill.load_teacher(config, mesh, rules)


def test_incompatible_teacher_or_student_is_an_error():
  config = load_config(**SMALL)
  t_backbone = backbones.build_vit(config.teacher.model)
  t_heads = st.build_heads(config.teacher.dino_head, config.teacher.ibot_head, False, jnp.float32)
  heads = st.build_heads(config.dino.head, config.ibot.head, False, jnp.float32)
  with pytest.raises(ValueError, match="patch grids"):
    distill.check_compatible(config, backbones.build_vit({**config.model, "patch_size": 8}), heads,
                             t_backbone, t_heads)
  fewer = ml_collections.ConfigDict({**config.dino.head, "prototypes": 256})
  wrong = st.build_heads(fewer, config.ibot.head, False, jnp.float32)
  with pytest.raises(ValueError, match="dino.head.prototypes=256"):
    distill.check_compatible(config, backbones.build_vit(config.model), wrong, t_backbone, t_heads)
  config.model.drop_path_rate = 0.1
  with pytest.raises(ValueError, match="stochastic depth"):
    distill.check_config(config)
  config.teacher.update(random_init=False, workdir="", checkpoint="")
  with pytest.raises(ValueError, match="No teacher"):
    distill.check_config(config)
  config.teacher.update(workdir="a", checkpoint="b.pth")
  with pytest.raises(ValueError, match="not both"):
    distill.check_config(config)


def test_resuming_with_another_teacher_is_an_error(tmp_path):
  mgr = checkpoint.manager(tmp_path)
  checkpoint.save(mgr, 1, {"step": jnp.int32(1)}, {"teacher": "checkpoint:/a.pth", "data": {}}, force=True)
  mgr.wait_until_finished()
  with pytest.raises(ValueError, match="teacher='checkpoint:/a.pth'"):
    loop.restore(loop.Run(config=None, workdir=str(tmp_path), mesh=None, rules=(), data_iter=None,
                          batch_shardings={}, ckpt=mgr, skipped=None,
                          run_meta={"teacher": "checkpoint:/b.pth"}), {"step": jnp.int32(0)}, None)


@pytest.mark.parametrize("arg,variant", [(None, "vit_small"), ("student=vitb14", "vit_base"),
                                         ("student=vitl14", "vit_large")])
def test_configs_load(arg, variant):
  config = load_config(arg)
  assert config.job == "distill" and config.model.variant == variant and config.model.ffn == "mlp"
  assert config.model.drop_path_rate == 0.0 and "mask_ratio" not in config.ibot
  assert config.optim.base_lr * np.sqrt(config.batch_size / 1024) == pytest.approx(1e-3)
  assert config.teacher.dino_head.prototypes == config.dino.head.prototypes == 131072
  assert config.teacher.ibot_head.prototypes == config.ibot.head.prototypes == 131072


def test_default_config_builds_vits14_and_the_vitg14_teacher_at_full_size():
  config = load_config(None)

  def count(model_config):
    shapes = jax.eval_shape(backbones.build_vit(model_config).init, jax.random.key(0),
                            jnp.zeros((1, 224, 224, 3)))
    return sum(x.size for x in jax.tree.leaves(shapes)) / 1e6

  assert count(config.model) == pytest.approx(21.7, rel=0.01)
  assert count(config.teacher.model) == pytest.approx(1136.5, rel=0.01)


def test_tiny_teacher_is_the_tiny_ssl_model():
  # So that `--config.teacher.workdir=workdir/ssl_tiny` (the README's SSL run) loads as the teacher.
  ssl_config = config_args.load_config(f"{jobs.REPO}/configs/dinov2_vits14.py:tiny")
  config = load_config("tiny")

  def shapes(model, dino_head, ibot_head, separate):
    backbone = backbones.build_vit(model)
    init = st.model_init(backbone, st.build_heads(dino_head, ibot_head, separate, backbone.dtype), 32)
    return jax.tree.map(lambda x: x.shape, nn.unbox(jax.eval_shape(init, jax.random.key(0))))

  t = config.teacher
  assert (shapes(t.model, t.dino_head, t.ibot_head, t.separate_head) ==
          shapes(ssl_config.model, ssl_config.dino.head, ssl_config.ibot.head, ssl_config.ibot.separate_head))
  assert config.model.embed_dim < t.model.embed_dim


def test_bad_student_argument_is_named():
  with pytest.raises(ValueError, match="Unknown student 'vitx14'"):
    load_config("student=vitx14")


# ---------------------------------------------------------------------------------------------------
# End to end: four runs of the tiny config at once (so both CI cores work): uninterrupted here on 8
# devices, one killed after its first checkpoint and then resumed, and one on 1 device
# ---------------------------------------------------------------------------------------------------
def _start(workdir, devices=8, **overrides):
  workdir.mkdir(parents=True, exist_ok=True)
  flags = [f"--config.{k}={v}" for k, v in {**SMALL, **overrides}.items()]
  with open(workdir / "log.txt", "a") as log:
    return subprocess.Popen(jobs.main_command(f"{CONFIG_FILE}:tiny", workdir, *flags), cwd=jobs.REPO,
                            env=jobs.cpu_env(devices), stdout=subprocess.DEVNULL, stderr=log)


def _finish(proc, workdir):
  assert proc.wait(timeout=900) == 0, (workdir / "log.txt").read_text()[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("distill")
  # The teacher: a training checkpoint's teacher keys as safetensors (no torch, no init to compile).
  *_, sd = _tiny_teacher_state_dict()
  convert.save_state_dict({k: v for k, v in sd.items() if k.startswith("teacher.")},
                          root / "teacher.safetensors")
  teacher = {"teacher.checkpoint": str(root / "teacher.safetensors"), "teacher.random_init": False}
  one_device = _start(root / "one", devices=1, **teacher)
  killed = _start(root / "killed", **teacher)
  resumed = {}

  def kill_after_first_checkpoint_then_resume():
    jobs.kill_at_checkpoint(killed, root / "killed" / "checkpoints" / "8")
    resumed["proc"] = _start(root / "killed", **teacher)

  watcher = threading.Thread(target=kill_after_first_checkpoint_then_resume)
  watcher.start()

  # The uninterrupted run, here, recording the teacher it loaded.
  loaded = {}
  original = distill.load_teacher

  def recording_load_teacher(*args):
    out = original(*args)
    loaded["params"] = out[2]
    loaded["copy"] = jax.tree.map(lambda x: np.array(x, copy=True), out[2])
    return out

  patch = pytest.MonkeyPatch()
  patch.setattr(distill, "load_teacher", recording_load_teacher)
  try:
    summary = distill.run(load_config(**{**SMALL, **teacher, "eval.every": 24}), str(root / "straight"))
  finally:
    patch.undo()
    watcher.join()
  _finish(one_device, root / "one")
  _finish(resumed["proc"], root / "killed")
  return root, summary, loaded


@pytest.mark.slow
def test_teacher_is_never_updated_and_the_student_learns(runs):
  root, summary, loaded = runs
  workdir = root / "straight"
  # The arrays the steps used are still alive (not donated) and bit-identical to what was loaded.
  for used, before in zip(jax.tree.leaves(loaded["params"]), jax.tree.leaves(loaded["copy"])):
    np.testing.assert_array_equal(np.asarray(used), before)
  step, state = jobs.final_state(workdir)
  assert step == 24 and set(state) == {"params", "ema", "opt", "center", "step"}  # no teacher
  # The optimizer state holds the student's params only.
  opt_sizes = {x.size for x in jax.tree.leaves(state["opt"]) if x.ndim}
  assert opt_sizes <= {x.size for x in jax.tree.leaves(state["params"])}

  rows = [r for r in loop.read_metrics(workdir) if "loss" in r]
  assert len(rows) == 24 and summary["teacher"] == f"checkpoint:{root / 'teacher.safetensors'}"
  for part in ("loss", "loss_dino_global", "loss_dino_local", "loss_ibot"):
    values = [r[part] for r in rows]
    assert np.mean(values[-5:]) < np.mean(values[:5]) - 0.05, (part, values[:5], values[-5:])
  assert 0.0 < summary["knn_top1"] <= 1.0  # the k-NN evaluation of the EMA ran

  # The exported final model is the student's EMA, in the official naming (48-wide, 3 heads).
  model, exported = convert.from_checkpoint(workdir / "student_ema.safetensors", num_heads=3)
  assert model.embed_dim == 48 and model.depth == 2
  for x, y in zip(jax.tree.leaves(state["ema"]["backbone"]), jax.tree.leaves(exported["params"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
                 zip(jax.tree.leaves(state["ema"]), jax.tree.leaves(state["params"])))


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(runs):
  root, *_ = runs
  resumed_from = re.findall(r"Resumed from step (\d+)", (root / "killed" / "log.txt").read_text())
  assert resumed_from and int(resumed_from[-1]) < 24  # the kill came mid-run
  (step_a, a), (step_b, b) = jobs.final_state(root / "straight"), jobs.final_state(root / "killed")
  assert step_a == step_b == 24
  jobs.assert_same_state(a, b)
  assert jobs.losses(root / "straight")[24] == jobs.losses(root / "killed")[24]


@pytest.mark.slow
def test_one_device_gives_the_eight_device_losses(runs):
  root, *_ = runs
  one, eight = jobs.losses(root / "one"), jobs.losses(root / "straight")
  np.testing.assert_allclose([eight[s] for s in (1, 2, 3)], [one[s] for s in (1, 2, 3)], rtol=2e-5)
  np.testing.assert_allclose([eight[s] for s in range(1, 25)], [one[s] for s in range(1, 25)], rtol=1e-4)
