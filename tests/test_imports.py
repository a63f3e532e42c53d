"""The house's floors, read from the source with `ast` (nothing is imported or compiled): dinojax's
imports form no cycle, nothing below the trainers imports them, and the shared rooms (loop,
backbones, features, checkpoint, ...) import no job at all."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dinojax"
CLIS = ("dinojax.main", "dinojax.segment", "dinojax.curate")
JOB_ROOMS = ("dinojax.trainers", "dinojax.evaluators", "dinojax.curation")


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
  """The dinojax modules `name` imports, anywhere in it (a deferred import counts too)."""
  found = set()
  for node in ast.walk(ast.parse(MODULES[name].read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      # `from a import b` imports module a.b when there is one, else a name of module a.
      found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                   for a in node.names)
  return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports(name) for name in MODULES}


def within(name: str, rooms) -> bool:
  return any(name == room or name.startswith(room + ".") for room in rooms)


def test_the_graph_is_read():
  assert "dinojax.loop" in GRAPH["dinojax.trainers.ssl"]
  assert "dinojax.backbones" in GRAPH["dinojax.evaluators.knn"]


def test_no_import_cycle():
  done, path = set(), []

  def visit(name):
    if name in path:
      pytest.fail("Import cycle: " + " -> ".join(path[path.index(name):] + [name]))
    if name in done:
      return
    path.append(name)
    for other in sorted(GRAPH[name]):
      visit(other)
    path.pop()
    done.add(name)

  for name in sorted(GRAPH):
    visit(name)


def test_nothing_below_the_trainers_imports_them():
  upward = {name: sorted(m for m in deps if within(m, ("dinojax.trainers",)))
            for name, deps in GRAPH.items() if not within(name, ("dinojax.trainers", *CLIS))}
  assert {k: v for k, v in upward.items() if v} == {}


def test_shared_rooms_import_no_job():
  upward = {name: sorted(m for m in deps if within(m, JOB_ROOMS + CLIS))
            for name, deps in GRAPH.items() if not within(name, JOB_ROOMS + CLIS)}
  assert {k: v for k, v in upward.items() if v} == {}
