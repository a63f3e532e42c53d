"""Parsing of a config file's string argument: `configs/x.py:vitb14_reg,depth=4,tiny`."""

import ast

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
    try:
      out[key] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      out[key] = value.strip()
  return ml_collections.ConfigDict(out)
