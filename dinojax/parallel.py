"""Device meshes and the logical-axis rules that place params and activations on them.

Models name their axes (`embed`, `mlp`, `heads`, `kv`, `vocab`, `norm`, `layers` for scanned blocks'
stacking axis; activations `batch`, `length`, `act_embed`); a config's rule table maps each name to mesh axes (`data`, `fsdp`, `model`). The same
model then runs data-parallel (`data`), with params sharded FSDP-style (`fsdp`), or tensor-parallel
(`model`) by changing only the mesh shape.
"""

import contextlib
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from dinojax.ops.sharding import divisible_spec

MESH_AXES = ("data", "fsdp", "model")

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Batch over every data-like axis; params' embed dim over fsdp; heads / FFN width over model; the
# stacked blocks' `layers` axis replicated (each device holds its share of every block).
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", "model"),
    ("norm", None),
    ("layers", None),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "model"),
)


def join_processes(coordinator: str | None, num_processes: int, process_id: int) -> None:
  """Joins the other processes of a multi-process JAX job (`coordinator` is process 0's host:port);
  on CPU they exchange data over gloo, which only the CPU backend reads and must be chosen before
  any backend starts."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator, num_processes, process_id)


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves sizes (at most one -1 meaning "the rest") against the device count."""
  unknown = [a for a in axes if a not in MESH_AXES]
  if unknown:
    raise ValueError(f"Unknown mesh axes {unknown}; mesh axes are {MESH_AXES}.")
  sizes = [int(axes.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(axes)}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"Mesh {dict(axes)} does not divide {num_devices} devices.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"Mesh {dict(axes)} has {math.prod(sizes)} devices, but {num_devices} are in use.")
  return tuple(sizes)


def make_mesh(axes: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None,
              dcn_axes: Mapping[str, int] | None = None) -> Mesh:
  """A (data, fsdp, model) mesh; by default all devices on `data`.

  With `dcn_axes` (e.g. {"data": 4} for 4 TPU slices) the mesh is hybrid: `axes` lay out the devices
  of one slice (fast interconnect) and `dcn_axes` repeat that layout across slices (data-centre
  network), so only the axes named there communicate between slices. Hosts without slice ids
  (GPU clusters, CPU) count each process as a slice.
  """
  devices = list(devices if devices is not None else jax.devices())
  dcn = tuple(int((dcn_axes or {}).get(a, 1)) for a in MESH_AXES)
  num_slices = math.prod(dcn)
  if num_slices == 1:
    shape = mesh_shape(axes or {"data": -1}, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)
  if len(devices) % num_slices:
    raise ValueError(f"DCN mesh {dict(dcn_axes)} does not divide {len(devices)} devices.")
  ici = mesh_shape(axes or {"data": -1}, len(devices) // num_slices)
  slices = {getattr(d, "slice_index", 0) for d in devices}
  grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                              process_is_granule=len(slices) < num_slices)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_shardings(abstract_boxed: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """NamedShardings for a tree of logically-annotated (boxed) values, e.g. `jax.eval_shape(model.init)`."""
  logical = nn.get_partition_spec(abstract_boxed)
  mesh_specs = nn.logical_to_mesh(logical, rules)
  shapes = nn.unbox(abstract_boxed)
  return jax.tree.map(lambda spec, x: NamedSharding(mesh, divisible_spec(spec, x.shape, mesh)),
                      mesh_specs, shapes, is_leaf=lambda x: isinstance(x, P))


def replicated_fraction(shapes: Any, shardings: Any) -> float:
  """Fraction of the bytes of `shapes` (arrays or `jax.eval_shape` structs) whose sharding in
  `shardings` splits them over no device: each device holds all of them."""
  sizes = [x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)]
  replicated = [s.is_fully_replicated for s in jax.tree.leaves(shardings)]
  return sum(n for n, r in zip(sizes, replicated) if r) / max(sum(sizes), 1)


def check_sharding(shapes: Any, shardings: Any, mesh: Mesh, tolerance: float) -> None:
  """Fails when more than `tolerance` of the parameter bytes are replicated on a mesh that could
  shard them (an axis other than `data`, which replicates params by design, has several devices):
  a rule table that misses a large parameter's axes costs its full size on every device (maxtext's
  `sharding_tolerance`)."""
  if math.prod(n for axis, n in mesh.shape.items() if axis != "data") == 1:
    return
  fraction = replicated_fraction(shapes, shardings)
  if fraction > tolerance:
    raise ValueError(
        f"{100 * fraction:.1f}% of the parameter bytes are replicated on every device of mesh "
        f"{dict(mesh.shape)}, more than sharding_tolerance={tolerance}: check sharding_rules (a "
        f"dimension a mesh axis does not divide stays replicated), or raise the tolerance.")


def init_sharded(init_fn, mesh: Mesh, rules: Rules, *args,
                 tolerance: float = 1.0) -> tuple[Any, Any]:
  """Runs `init_fn(*args)` straight into its shardings; returns (unboxed params, shardings). Fails
  before allocating when more than `tolerance` of the bytes would be replicated (`check_sharding`)."""
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_to_shardings(abstract, mesh, rules)
  check_sharding(nn.unbox(abstract), shardings, mesh, tolerance)
  params = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return params, shardings


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, ndim: int = 1) -> NamedSharding:
  """Sharding of an array whose leading dim is the batch."""
  batch_axes = dict(rules).get("batch")
  return NamedSharding(mesh, P(batch_axes, *([None] * (ndim - 1))))


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Context under which the models' `with_logical_constraint` calls constrain activations."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def batch_shards(mesh: Mesh | None = None, rules: Rules | None = None) -> int:
  """How many ways the logical `batch` axis is split: over `mesh` by `rules`, by default those of the
  current `activation_sharding` (1 outside one). Each device's share of a batch is then one of this
  many contiguous slices."""
  mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1
  axes = dict(rules if rules is not None else nn.get_logical_axis_rules()).get("batch")
  names = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return math.prod(mesh.shape[n] for n in names)


def sharded_fraction(tree: Any) -> float:
  """Fraction of the bytes of `tree` held by one device: 1.0 means fully replicated."""
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  local = sum(x.addressable_shards[0].data.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  return local / max(total, 1)


def to_device(tree: Any, shardings: Any) -> Any:
  """Places host arrays (e.g. converted checkpoints) onto their shardings."""
  return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), tree, shardings)
