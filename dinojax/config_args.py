"""Config files: parsing their string argument (`configs/x.py:vitb14_reg,depth=4,tiny`), and loading
one outside the command line."""

import ast
import importlib.util
import os
import pathlib

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """`key=value` items override `defaults` (values parsed as Python literals, else strings); a bare
  `name` sets a boolean default to True, or else fills the first default if that one is not a
  boolean (the positional one). Unknown keys are an error, so a typo never passes silently."""
  out = dict(defaults)
  first = next(iter(defaults), None)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep:
      if isinstance(defaults.get(key), bool):
        out[key] = True
        continue
      if isinstance(defaults.get(first), bool):
        raise ValueError(f"Unknown config argument {key!r}; known: {sorted(defaults)}.")
      key, value = first, item
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r}; known: {sorted(defaults)}.")
    out[key] = literal(value)
  return ml_collections.ConfigDict(out)


def literal(value: str):
  """A command-line value as a Python literal (`0.1`, `(1, 2)`, `True`), else the string itself."""
  try:
    return ast.literal_eval(value.strip())
  except (ValueError, SyntaxError):
    return value.strip()


def parse_overrides(items: list[str]) -> dict:
  """Command-line `KEY=VALUE` items (`model.attention=pallas`) as {key: literal value}."""
  pairs = [item.partition("=") for item in items]
  bad = [item for item, (_, sep, _) in zip(items, pairs) if not sep]
  if bad:
    raise ValueError(f"Config overrides must be KEY=VALUE, got {bad}.")
  return {key.strip(): literal(value) for key, _, value in pairs}


def may_add(key: str) -> bool:
  """Whether an override may add `key` to a config that lacks it: a setting of an evaluation
  (`evals.<name>.<setting>`) or a whole new evaluation (`evals.<name>`, a dict with its `type`),
  which `config_check` compares with the evaluator's own settings. Every other key must exist, so a
  typo is an error, not a new entry."""
  parts = key.split(".")
  return parts[0] == "evals" and len(parts) in (2, 3)


def override(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
  """Sets dotted keys (`{"model.drop_path_rate": 0.0}`) as `--config.model.drop_path_rate=0.0` does;
  a key the config does not have is an error, not a new entry (except where `may_add`)."""
  for key, value in values.items():
    *parents, leaf = key.split(".")
    node = config
    try:
      for name in parents:
        node = node[name]
    except (KeyError, TypeError):  # a missing parent, or a parent that is a value
      node = None
    if not isinstance(node, ml_collections.ConfigDict) or (leaf not in node and not may_add(key)):
      raise KeyError(f"The config has no {key!r}.")
    with node.unlocked():
      node[leaf] = value
  return config


def load_config(spec: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config `spec` names, as `--config` reads it: `path/to/config.py` or `path/to/config.py:arg`,
  whose module's `get_config(arg)` (or `get_config()` without an argument) makes it. For benches,
  tests and notebooks that build a job's config without its command line."""
  path, sep, arg = str(spec).partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No config file {path!r} (from {str(spec)!r}).")
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if sep else module.get_config()
