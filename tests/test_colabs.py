"""Every notebook in colabs/ runs top to bottom (code cells executed in order, one namespace)."""

import json
import pathlib

import pytest

COLABS = sorted((pathlib.Path(__file__).resolve().parents[1] / "colabs").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", COLABS, ids=[p.name for p in COLABS])
def test_notebook_runs(notebook):
  cells = json.loads(notebook.read_text())["cells"]
  namespace = {"__name__": "__main__"}
  for i, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
    source = "".join(cell["source"])
    exec(compile(source, f"{notebook.name}[cell {i}]", "exec"), namespace)
  assert namespace.get("picture") is not None


def test_there_are_notebooks():
  assert COLABS, "colabs/ should hold the demo notebooks"
