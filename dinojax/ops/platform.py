"""The platform a program is traced for, which is not always the one tracing it."""

import jax


def target_platform() -> str:
  """"cpu", "gpu" or "tpu": that of the mesh in context (`jax.set_mesh`), which may be another
  machine's when compiling ahead of time for it (`bench/sharded_step.py --topology`), else the
  default backend's. What the ops choose while tracing (kernel, interpret mode) follows it."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  platform = device.platform if device is not None else jax.default_backend()
  return "gpu" if platform in ("cuda", "rocm") else platform
