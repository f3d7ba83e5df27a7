"""The notebooks: committed run top to bottom with their outputs and figures, and shown in the
README; and (slow) each one executed with nbclient the way a user runs it, from ``notebooks/``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
# each notebook and the figures it writes to docs/img (FIGURES), which the README shows
FIGURES = {
    "how_gpt3_works": ["generation.png", "forward_shapes.png", "parameters.png", "attention.png"],
    "sample_from_checkpoint": ["sampling.png"],
    "finetune": ["finetune.png"],
}


def read(name: str) -> dict:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def outputs_text(cell: dict) -> str:
    parts = []
    for o in cell["outputs"]:
        parts.append("".join(o.get("text", "")))
        parts.append("".join(o.get("data", {}).get("text/plain", "")))
    return "".join(parts)


def test_the_notebooks_are_these() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_committed_run_top_to_bottom_with_figures(name: str) -> None:
    nb = read(name)
    cells = code_cells(nb)
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1)), "run once, in order"
    for cell in cells:
        assert not [o for o in cell["outputs"] if o["output_type"] == "error"], "".join(cell["source"])
        images = [o for o in cell["outputs"] if "image/png" in o.get("data", {})]
        assert len(images) == "".join(cell["source"]).count("plt.show()"), "".join(cell["source"])[:200]
        text = outputs_text(cell)
        assert not re.search(r"/(home|work|tmp|Users)/", text), (
            f"a machine's path in the outputs: {text[:300]}"
        )
    params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and 'CHECKPOINT = ""' in "".join(params[0]["source"]), "committed as it trains"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_readme_shows_the_figures_and_links_the_notebooks() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, figures in FIGURES.items():
        assert f"notebooks/{name}.ipynb" in readme
        for figure in figures:
            path = ROOT / "docs" / "img" / figure
            assert f"(docs/img/{figure})" in readme
            assert path.stat().st_size < 150_000, f"{figure}: keep the README's figures small"
    shown = set(re.findall(r"\(docs/img/([^)]+\.png)\)", readme))
    assert shown == {f for figures in FIGURES.values() for f in figures}
    assert {p.name for p in (ROOT / "docs" / "img").glob("*.png")} == shown, "no figure left unused"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's layout as the notebooks see it: notebooks/ beside configs/, and
    docs/img for the figures they write; the one small run they train lands in notebooks/runs."""
    root = tmp_path_factory.mktemp("repo")
    (root / "notebooks").mkdir()
    for path in NOTEBOOKS.glob("*.ipynb"):
        shutil.copy(path, root / "notebooks" / path.name)
    (root / "configs").symlink_to(ROOT / "configs")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FIGURES))  # in this order: the first one trains the shared run
def test_notebook_runs_from_notebooks_folder(name: str, layout: Path, monkeypatch) -> None:
    """Execute the notebook with a Jupyter kernel, from notebooks/, as `make notebooks` sets up:
    no errors, its figures drawn and written, and (the first one) the small model trained."""
    nbclient = pytest.importorskip("nbclient", reason="the notebooks extra (make notebooks)")
    import nbformat

    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the kernel gets one CPU device, as a user's does
    folder = layout / "notebooks"
    nb = nbformat.read(folder / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    images = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})
    ]
    assert len(images) == sum(
        "".join(c.source).count("plt.show()") for c in nb.cells if c.cell_type == "code"
    )
    for figure in FIGURES[name]:
        assert (layout / "docs" / "img" / figure).stat().st_size > 10_000
    assert (folder / "runs" / "notebooks" / "checkpoints" / "600" / "params").is_dir()
