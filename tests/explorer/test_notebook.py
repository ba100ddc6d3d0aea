"""notebooks/explore.ipynb runs top to bottom against a real run directory."""

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "explore.ipynb"


def test_explore_notebook_executes(small_run, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["ASAP_RUN"] = str(small_run)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
    finally:
        del os.environ["ASAP_RUN"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(
        str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs
    )
    assert "(box)" in text and "rows" in text
    assert (tmp_path / "selection.csv").exists()
