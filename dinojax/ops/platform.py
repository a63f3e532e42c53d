"""The platform a program is traced for, which is not always the one tracing it."""

import jax
import jax.numpy as jnp


def target_platform() -> str:
  """"cpu", "gpu" or "tpu": that of the mesh in context (`jax.set_mesh`), which may be another
  machine's when compiling ahead of time for it (`bench/sharded_step.py --topology`), else the
  default backend's. What the ops choose while tracing (kernel, interpret mode) follows it."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  platform = device.platform if device is not None else jax.default_backend()
  return "gpu" if platform in ("cuda", "rocm") else platform


COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def compute_dtype(name: str) -> jnp.dtype:
  """The dtype a model computes in, by name. "auto" follows the platform: float16 on GPUs, the
  official evaluations' autocast (`dinov2/eval/setup.py`, fp16 from `ssl_default_config.yaml`);
  bfloat16 on TPUs, whose matrix units take bfloat16 rather than float16, and on CPUs."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"Unknown compute dtype {name!r}; choose one of {COMPUTE_DTYPES}.")
  if name == "auto":
    return jnp.dtype(jnp.float16 if target_platform() == "gpu" else jnp.bfloat16)
  return jnp.dtype(name)
