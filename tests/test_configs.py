"""Every config file loads, names a known job, passes the value checks on 8 devices, and describes a
model that builds at full size."""

import pathlib

import jax
import jax.numpy as jnp
import pytest

from dinojax import backbones, config_args, config_check, main

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))
VARIANTS = {"dinov2_vitl14.py": [None, "high_res"], "dinov2_vits14.py": [None, "tiny"],
            "features_pca.py": [None, "vitb14"], "dinotxt_vitl14.py": [None, "tiny"],
            "distill_vitg14_to_vits14.py": [None, "tiny", "student=vitb14"],
            "talk2dino_vitb14reg.py": [None, "tiny"], "linear_eval.py": [None, "tiny", "vitg14"],
            "knn_eval.py": [None, "tiny"], "log_regression_eval.py": [None, "tiny", "vitg14"],
            "talk2dino_eval.py": [None, "custom,tiny", "ade20k,backbone=vitl14_reg"],
            "linear_segmentation_eval.py": [None, "tiny", "voc,backbone=vits14,ms", "ms,tiny"]}


def load(path, arg):
  return config_args.load_config(path if arg is None else f"{path}:{arg}")


@pytest.mark.parametrize("path,arg", [(p, a) for p in CONFIGS for a in VARIANTS.get(p.name, [None])],
                         ids=lambda x: getattr(x, "name", str(x)))
def test_config_loads(path, arg):
  config = load(path, arg)
  assert config.job in main.JOBS
  assert config_check.problems(config, num_devices=8) == []
  if config.job in ("ssl", "distill"):
    assert config.crops.global_size % config.model.patch_size == 0
    assert config.crops.local_size % config.model.patch_size == 0


@pytest.mark.parametrize("name,params_millions", [("dinov2_vits14.py", 21.7), ("dinov2_vitl14.py", 303.3),
                                                   ("dinov2_vitg14.py", 1136.5)])
def test_official_backbones_have_the_published_size(name, params_millions):
  config = load(CONFIGS[[p.name for p in CONFIGS].index(name)], None)
  backbone = backbones.build_vit(config.model)
  size = config.crops.global_size
  shapes = jax.eval_shape(backbone.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  count = sum(x.size for x in jax.tree.leaves(shapes)) / 1e6
  assert count == pytest.approx(params_millions, rel=0.01)


def test_bad_variant_argument_is_named():
  with pytest.raises(ValueError, match="Unknown config argument 'tiyn'"):
    load(CONFIGS[[p.name for p in CONFIGS].index("dinov2_vits14.py")], "tiyn")


def test_load_config_passes_the_argument_and_names_a_missing_file(tmp_path):
  path = CONFIGS[[p.name for p in CONFIGS].index("dinov2_vits14.py")]
  assert (load(path, "tiny").model.variant, load(path, None).model.variant) == (None, "vit_small")
  with pytest.raises(FileNotFoundError, match="no_such_config.py"):
    config_args.load_config(tmp_path / "no_such_config.py:tiny")


def test_overrides_set_dotted_keys_and_name_unknown_ones():
  config = load(CONFIGS[[p.name for p in CONFIGS].index("dinov2_vits14.py")], "tiny")
  values = config_args.parse_overrides(["model.attention=pallas", "model.drop_path_rate=0.2",
                                        "crops.local_scale=(0.1, 0.5)"])
  assert values == {"model.attention": "pallas", "model.drop_path_rate": 0.2, "crops.local_scale": (0.1, 0.5)}
  config_args.override(config, values)
  assert (config.model.attention, config.model.drop_path_rate) == ("pallas", 0.2)
  for typo in ("model.drop_path", "modle.depth", "model.depth.x"):
    with pytest.raises(KeyError, match=typo):
      config_args.override(config, {typo: 1})
  with pytest.raises(ValueError, match="KEY=VALUE"):
    config_args.parse_overrides(["model.depth"])
