import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from dinojax.ops import numerics


def test_gelu_matches_torch_and_jax_exact_gelu():
  x = np.linspace(-12, 12, 10_001, dtype=np.float32)
  ours = numerics.gelu(jnp.asarray(x))
  np.testing.assert_allclose(ours, F.gelu(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ours, jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)
  assert numerics.gelu(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16

