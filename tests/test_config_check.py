"""The config value checks `python -m dinojax.main` runs before building anything (the command-line
path itself: tests/test_main.py)."""

import pytest
from absl import flags

from dinojax import config_args, config_check
from jobs import REPO

SSL_TINY = f"{REPO / 'configs/dinov2_vits14.py'}:tiny"


@pytest.fixture(scope="module")
def ssl_tiny():
  return config_args.load_config(SSL_TINY)


@pytest.mark.parametrize("key,value,problem", [
    ("crops.local_scale", (0.5,), "--config.crops.local_scale=(0.5,): must be a (min, max) pair"),
    ("crops.global_scale", (1.0, 0.3),
     "--config.crops.global_scale=(1.0, 0.3): must be a (min, max) pair"),
    ("checkpoint.every", 0, "--config.checkpoint.every=0: must be a positive integer."),
    ("log_every", 0, "--config.log_every=0: must be a positive integer."),
    ("total_steps", -5, "--config.total_steps=-5: must be an integer >= 0."),
    ("batch_size", -64, "--config.batch_size=-64: must be a positive integer."),
    ("crops.local_size", 64,
     "--config.crops.local_size=64: a local crop must not be larger than the global one"),
    ("data.source", "", "--config.data.source='': must name a data source"),
    ("model.attention", "flash", "--config.model.attention='flash': must be one of ['auto', 'chunked'"),
    ("centering", "sinkhorn",
     "--config.centering='sinkhorn': must be one of ['sinkhorn_knopp', 'softmax']"),
    ("model.dtype", "fp16", "--config.model.dtype='fp16': must be one of"),
    ("model.num_heads", 5, "--config.model.embed_dim=96: must be divisible by model.num_heads=5."),
    ("teacher.momentum", 1.5, "--config.teacher.momentum=1.5: must be a number in [0, 1]."),
    ("sharding_tolerance", -0.1, "--config.sharding_tolerance=-0.1: must be a number in [0, 1]."),
    ("dino.student_temp", 0.0, "--config.dino.student_temp=0.0: must be a number > 0."),
    ("init_from", "/no/such/run", "--config.init_from='/no/such/run': no such file or directory."),
    ("mesh.data", 0, "--config.mesh.data=0: must be a positive size or -1"),
    ("loss_group", 48, "--config.loss_group=48: must divide batch_size=64"),
    ("profile.steps", (5, 5), "--config.profile.steps=(5, 5): must be (start, stop) steps with 0 <= start"),
])
def test_a_value_that_makes_no_sense_is_named(ssl_tiny, key, value, problem):
  config = config_args.override(ssl_tiny.copy_and_resolve_references(), {key: value})
  found = config_check.problems(config, num_devices=8)
  assert len(found) == 1 and found[0].startswith(problem), found


def test_zero_means_never_or_derived_where_the_config_says_so(ssl_tiny):
  config = config_args.override(ssl_tiny.copy_and_resolve_references(),
                                {"eval.every": 0, "total_steps": 0, "crops.local_number": 0})
  assert config_check.problems(config, num_devices=8) == []
  config.eval.every, config.eval.source = 100, ""
  assert config_check.problems(config) == [
      "--config.eval.source='': an evaluation every eval.every steps needs a source (or set "
      "--config.eval.every=0)."]


def test_batches_must_split_over_the_mesh_batch_axes(ssl_tiny):
  config = config_args.override(ssl_tiny.copy_and_resolve_references(),
                                {"batch_size": 60, "eval.batch_size": 120})
  assert config_check.problems(config, num_devices=4) == []
  assert config_check.problems(config, num_devices=8) == [
      "--config.batch_size=60: must be divisible by the 8 devices of the mesh's batch axes data×fsdp "
      "(mesh {'data': 8, 'fsdp': 1, 'model': 1})."]
  config_args.override(config, {"batch_size": 64, "mesh.data": 1, "mesh.model": -1})
  assert config_check.problems(config, num_devices=8) == []  # model parallel: the batch is whole
  config.mesh.data = 3
  assert config_check.problems(config, num_devices=8) == [
      "--config.mesh={'data': 3, 'fsdp': 1, 'model': -1}: Mesh {'data': 3, 'fsdp': 1, 'model': -1} "
      "does not divide 8 devices."]


def test_an_unknown_override_is_named_with_the_closest_keys():
  argv = ["main.py", "--config", SSL_TINY, "--workdir", "w", "--config.seed=1"]
  assert config_check.unknown_key(argv) is None
  assert config_check.unknown_key([*argv, "--config.optim.base_lrr=1"]) == (
      "--config.optim.base_lrr: config.optim has no key 'base_lrr'; "
      "did you mean --config.optim.base_lr?")
  assert config_check.unknown_key([*argv, "--config.optimm.lr", "1"]) == (
      "--config.optimm.lr: config has no key 'optimm'; did you mean --config.optim?")
  assert config_check.unknown_key([*argv, "--config.seed.x=1"]) == (
      "--config.seed.x: config.seed is a value, not a section.")


@pytest.mark.parametrize("key,value,problem", [
    ("cluster.resampling_steps", [0, 10, 10], "--config.cluster.resampling_steps=[0, 10, 10]: must be"),
    ("cluster.n_splits", [1, 2, 1], "--config.cluster.n_splits=[1, 2, 1]: only level 1 can be split"),
    ("cluster.n_splits", [1, 1], "--config.cluster.n_clusters=[60, 12, 4]: n_clusters, n_splits"),
])
def test_curation_levels_are_checked(key, value, problem):
  config = config_args.override(config_args.load_config(REPO / "configs/curate_tiny.py"), {key: value})
  found = config_check.problems(config, num_devices=8)
  assert len(found) == 1 and found[0].startswith(problem), found


def _parse(*overrides: str):
  """The config `python -m dinojax.main --config SSL_TINY *overrides` runs (its flag parsing alone)."""
  argv = ["main.py", "--config", SSL_TINY, *overrides]
  flag_values = flags.FlagValues()
  config_check.define_config_flag("", flag_values=flag_values, sys_argv=argv)
  config_check.parse_flags(argv, flag_values=flag_values)
  return flag_values["config"].value


def test_an_evaluation_is_set_turned_off_or_added_on_the_command_line():
  config = _parse("--config.evals.knn.every=0", "--config.evals.knn.knn_k=5",
                  "--config.evals.pictures.first=False",
                  "--config.evals.logreg={'type': 'log_regression', 'c_powers': (-1, 1, 3)}")
  assert config.evals.knn.to_dict() == {"type": "knn", "every": 0, "knn_k": 5}
  assert config.evals.pictures.first is False
  assert config.evals.logreg.to_dict() == {"type": "log_regression", "c_powers": (-1, 1, 3)}
  assert config_check.problems(config, num_devices=8) == []
  with pytest.raises(AttributeError):  # locked again once parsed
    config.evals.knn.new_key = 1


def test_a_bad_evaluation_entry_is_named_with_the_closest_names(capsys):
  config = _parse("--config.evals.knn.knn_kk=5", "--config.evals.pictures.type=pictuers",
                  "--config.evals.knn.every=-1")
  assert config_check.problems(config) == [
      "--config.evals.knn.every=-1: must be an integer >= 0.",
      "--config.evals.knn.knn_kk=5: a 'knn' evaluation has no such setting (did you mean 'knn_k'?); it "
      "takes ['batch_size', 'every', 'first', 'heldout_split', 'image_size', 'knn_k', 'knn_temperature', "
      "'source', 'train_split'].",
      "--config.evals.pictures.type='pictuers': must be one of ['knn', 'linear_segmentation', "
      "'log_regression', 'pictures', 'retrieval', 'talk2dino_segmentation', 'zero_shot'] (did you mean "
      "'pictures'?)."]
  for override, line in [
      ("--config.optim.base_lrr=1", "--config.optim.base_lrr: config.optim has no key 'base_lrr'; did you "
       "mean --config.optim.base_lr?"),
      ("--config.evals.knn2.every=1", "--config.evals.knn2.every: config.evals has no key 'knn2'; did you "
       "mean --config.evals.knn? A new evaluation comes whole: --config.evals.knn2='{\"type\": ...}'.")]:
    with pytest.raises(SystemExit) as exit_:
      _parse(override)
    assert exit_.value.code == 2 and capsys.readouterr().err == line + "\n"
