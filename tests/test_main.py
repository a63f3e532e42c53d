import json

import numpy as np
import pytest
from PIL import Image

import jobs
from dinojax.evaluators import pca


def _run_main(*args, tmp_path, config_arg="vits14_reg,depth=2", env=None):
  return jobs.run_main(f"{jobs.REPO / 'configs/features_pca.py'}:{config_arg}", tmp_path, *args,
                       check=False, env=env)


@pytest.mark.slow
def test_main_job_writes_pca_picture_and_caches_its_compiles_in_the_workdir(tmp_path):
  env = {**jobs.cpu_env(), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  del env["JAX_COMPILATION_CACHE_DIR"]  # the tests' shared cache; a user's run has none
  result = _run_main("--config.resolution=112", tmp_path=tmp_path, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert any((tmp_path / "xla_cache").iterdir())
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["grid"] == [8, 12] and summary["embed_dim"] == 384 and summary["random_weights"]
  picture = Image.open(tmp_path / "pca.png")
  assert picture.size == (2 * 168, 112)
  features = np.load(tmp_path / "features.npz")
  assert features["patch_tokens"].shape == (8, 12, 384)


@pytest.mark.slow
def test_command_line_mistakes_stop_before_anything_is_built_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  for args, config_arg, line in [
      (["--config.resolutionn=224"], "vits14_reg,depth=2",
       "--config.resolutionn: config has no key 'resolutionn'; did you mean --config.resolution?"),
      ([], "vits14_reg,dpeth=2", f"--config={jobs.REPO / 'configs/features_pca.py'}:vits14_reg,dpeth=2: "
       "Unknown config argument 'dpeth'; known: ['depth', 'model']."),
      (["--config.resolution=0"], "vits14_reg,depth=2",
       "--config.resolution=0: must be a positive integer.")]:
    result = _run_main(*args, tmp_path=workdir, config_arg=config_arg)
    assert (result.returncode, result.stderr.splitlines()) == (2, [line]), result.stderr[-3000:]
  assert not workdir.exists()  # no config.json, no compilation cache: nothing ran


def test_pca_rgb_foreground_split():
  rng = np.random.default_rng(0)
  tokens = rng.normal(size=(6, 6, 16)) * 0.1
  tokens[:3] += 5.0  # an obvious "object" in the top half
  colours = pca.pca_rgb(tokens, foreground_threshold=0.5)
  assert colours.shape == (6, 6, 3) and colours.min() >= 0 and colours.max() <= 1
  dark = (colours.sum(-1) == 0)
  assert dark[:3].all() != dark[3:].all() and (dark[:3].all() or dark[3:].all())
  with pytest.raises(ValueError, match="foreground_threshold"):
    pca.pca_rgb(tokens, foreground_threshold=1.0)
