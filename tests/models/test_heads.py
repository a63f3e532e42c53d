import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

from dinojax.models.heads import DINOHead


@pytest.mark.slow
@pytest.mark.parametrize("nlayers", [1, 3])
def test_dino_head_matches_torch_weight_norm(nlayers):
  head = DINOHead(out_dim=40, nlayers=nlayers, hidden_dim=24, bottleneck_dim=8)
  x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
  params = nn.unbox(head.init(jax.random.key(0), x))
  p = jax.tree.map(np.asarray, params["params"])
  p["last_layer_g"] = np.random.default_rng(1).uniform(0.5, 2, size=40).astype(np.float32)
  layers = []
  for i in range(nlayers):
    lin = torch.nn.Linear(*p[f"mlp_{i}"]["kernel"].shape)
    lin.weight.data = torch.from_numpy(p[f"mlp_{i}"]["kernel"].T.copy())
    lin.bias.data = torch.from_numpy(p[f"mlp_{i}"]["bias"].copy())
    layers += [lin, torch.nn.GELU()]
  mlp = torch.nn.Sequential(*layers[:-1])
  last = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(8, 40, bias=False))
  last.parametrizations.weight.original1.data = torch.from_numpy(p["last_layer_v"].T.copy())
  last.parametrizations.weight.original0.data = torch.from_numpy(p["last_layer_g"][:, None].copy())
  with torch.no_grad():
    ref = last(torch.nn.functional.normalize(mlp(torch.from_numpy(x)), dim=-1)).numpy()
  out = head.apply({"params": p}, x)
  assert out.shape == (5, 40)
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_prototypes_carry_the_vocab_axis_and_every_kernel_the_fsdp_one():
  head = DINOHead(out_dim=64, hidden_dim=32, bottleneck_dim=8)
  specs = nn.get_partition_spec(jax.eval_shape(head.init, jax.random.key(0), np.zeros((1, 16))))
  P = jax.sharding.PartitionSpec
  assert specs["params"]["last_layer_v"] == P("embed", "vocab")
  assert specs["params"]["mlp_0"]["kernel"] == P("embed", "mlp")
  assert specs["params"]["mlp_1"]["kernel"] == P("embed", "mlp")
  assert specs["params"]["mlp_2"]["kernel"] == P("mlp", "embed")
