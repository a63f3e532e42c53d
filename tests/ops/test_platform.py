import jax
import jax.numpy as jnp
import pytest

from dinojax.ops import platform


def test_auto_compute_dtype_is_fp16_on_gpus_and_bf16_elsewhere(monkeypatch):
  assert platform.compute_dtype("auto") == jnp.bfloat16  # the tests' CPU
  assert platform.compute_dtype("float16") == jnp.float16
  for backend, dtype in (("gpu", jnp.float16), ("tpu", jnp.bfloat16), ("cpu", jnp.bfloat16)):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert platform.compute_dtype("auto") == dtype, backend
  with pytest.raises(ValueError, match="Unknown compute dtype 'fp16'; choose one of"):
    platform.compute_dtype("fp16")
