import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinojax import parallel
from dinojax.models.vit import ViT

TINY = dict(embed_dim=64, depth=2, num_heads=4, patch_size=14, img_size=56, num_register_tokens=4)


def test_mesh_shape_resolution_and_errors():
  assert parallel.mesh_shape({"data": -1}, 8) == (8, 1, 1)
  assert parallel.mesh_shape({"fsdp": 2, "model": -1}, 8) == (1, 2, 4)
  with pytest.raises(ValueError, match="Unknown mesh axes"):
    parallel.mesh_shape({"dta": 8}, 8)
  with pytest.raises(ValueError, match="At most one"):
    parallel.mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="has 6 devices"):
    parallel.mesh_shape({"data": 3, "fsdp": 2}, 8)
  with pytest.raises(ValueError, match="does not divide"):
    parallel.mesh_shape({"data": -1, "model": 3}, 8)


def _forward(mesh_axes, devices, **kwargs):
  model = ViT(**TINY, **kwargs)
  mesh = parallel.make_mesh(mesh_axes, devices)
  images = jax.random.normal(jax.random.key(1), (8, 56, 42, 3))
  params, _ = parallel.init_sharded(model.init, mesh, parallel.DEFAULT_RULES, jax.random.key(0),
                                    images[:1])
  images = jax.device_put(images, parallel.batch_sharding(mesh, ndim=4))
  with parallel.activation_sharding(mesh, parallel.DEFAULT_RULES):
    out = jax.jit(model.apply)(params, images)
  return params, out


@pytest.mark.slow
@pytest.mark.parametrize("mesh_axes,scan_blocks", [({"fsdp": 2, "model": 4}, False), ({"data": 8}, False),
                                                   ({"data": 2, "fsdp": 4}, False),
                                                   ({"fsdp": 2, "model": 4}, True)])
def test_sharded_forward_equals_one_device(mesh_axes, scan_blocks):
  _, ref = _forward({"data": 1}, jax.devices()[:1], scan_blocks=scan_blocks)
  params, out = _forward(mesh_axes, jax.devices(), scan_blocks=scan_blocks)
  for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_norm_regtokens"):
    np.testing.assert_allclose(out[key], ref[key], atol=1e-5)
  if mesh_axes.get("model", 1) > 1:
    # Scanned blocks are stacked on a leading `layers` axis, which the rules replicate.
    qkv = params["params"]["blocks" if scan_blocks else "blocks_0"]["attn"]["qkv"]["kernel"]
    assert qkv.sharding.spec == jax.sharding.PartitionSpec(*[None] * scan_blocks, "fsdp", None, "model", None)
    assert parallel.sharded_fraction(params) < 0.25  # big matrices split 8 ways, norms replicated


def test_shardings_fall_back_to_replication_when_not_divisible():
  mesh = parallel.make_mesh({"model": 8})
  model = ViT(**{**TINY, "num_heads": 2, "embed_dim": 32})  # 2 heads cannot split over 8
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 56, 56, 3)))
  shardings = parallel.logical_to_shardings(abstract, mesh)
  qkv = shardings["params"]["blocks_0"]["attn"]["qkv"]["kernel"]
  fc1 = shardings["params"]["blocks_0"]["mlp"]["fc1"]["kernel"]
  assert qkv.spec == jax.sharding.PartitionSpec("fsdp", None, None, None)  # fsdp has size 1
  assert fc1.spec == jax.sharding.PartitionSpec("fsdp", "model")


def test_too_much_replication_fails_before_init():
  model = ViT(**TINY)
  args = (jax.random.key(0), jnp.zeros((1, 56, 56, 3)))
  abstract = jax.eval_shape(model.init, *args)
  fsdp = parallel.make_mesh({"fsdp": 8})
  shapes = abstract["params"]
  good = parallel.logical_to_shardings(abstract, fsdp)["params"]
  assert parallel.replicated_fraction(shapes, good) < 0.05  # norms, biases, LayerScale
  parallel.check_sharding(shapes, good, fsdp, tolerance=0.05)
  # Rules that forget `embed`, the only axis fsdp shards: every parameter replicated.
  rules = tuple(r for r in parallel.DEFAULT_RULES if r[0] != "embed")
  bad = parallel.logical_to_shardings(abstract, fsdp, rules)["params"]
  assert parallel.replicated_fraction(shapes, bad) == 1.0
  with pytest.raises(ValueError, match=r"100.0% of the parameter bytes are replicated .* sharding_tolerance=0.3"):
    parallel.init_sharded(model.init, fsdp, rules, *args, tolerance=0.3)  # raises before compiling
  # Pure data parallelism replicates every parameter by design.
  data = parallel.make_mesh({"data": 8})
  parallel.check_sharding(shapes, parallel.logical_to_shardings(abstract, data)["params"], data, 0.0)


def test_batch_sharding_uses_the_batch_rule():
  mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
  expected = jax.sharding.PartitionSpec(("data", "fsdp"), None, None)
  assert parallel.batch_sharding(mesh, ndim=3).spec == expected
