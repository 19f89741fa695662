"""The exploration notebook runs top to bottom on a tiny world and draws its plots."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def test_notebook_runs(tmp_path, monkeypatch):
    for var in ("NOTEBOOK_DB", "NOTEBOOK_MODELS", "NOTEBOOK_WORLD"):
        monkeypatch.delenv(var, raising=False)
    nb = nbformat.read(ROOT / "notebooks" / "exploration.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5
