"""Notebook sources are reviewable in a diff: .ipynb with outputs stripped, one parameters cell, the
project kernel, a title and a purpose sentence first, and parameters papermill can read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from smartrouter.config import REPO_ROOT
from smartrouter.notebook_tools import strip_notebook
from smartrouter.pipeline import STAGES

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb")) + sorted((REPO_ROOT / "tests" / "notebooks").glob("*.ipynb"))
STRIP_HINT = "run `python -m smartrouter.notebook_tools strip {path}`"


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO_ROOT)) for p in paths]


def _params_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_every_stage_has_a_notebook() -> None:
    missing = [s for s in STAGES if not (REPO_ROOT / "notebooks" / f"{s}.ipynb").is_file()]
    assert not missing, f"stage notebooks missing from notebooks/: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_outputs_stripped(path: Path) -> None:
    nb = nbformat.read(str(path), as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; " + STRIP_HINT.format(path=path)
    assert "widgets" not in nb.metadata, f"{path.name}: widget state saved; " + STRIP_HINT.format(path=path)
    assert "papermill" not in nb.metadata, f"{path.name} is an executed papermill output, not a source"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_kernel_title_and_one_parameters_cell(path: Path) -> None:
    nb = nbformat.read(str(path), as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == "smartrouter", f"{path.name}: kernelspec must be 'smartrouter'"
    first = nb.cells[0]
    assert first.cell_type == "markdown", f"{path.name}: the first cell must be markdown (title + purpose)"
    lines = [ln for ln in first.source.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("# "), f"{path.name}: the first cell must open with a '# Title'"
    assert len(lines) >= 2 and re.search(r"\w.*[.:]", " ".join(lines[1:])), f"{path.name}: add a purpose sentence under the title"
    params = _params_cells(nb)
    assert len(params) == 1, f"{path.name}: needs exactly one cell tagged 'parameters', found {len(params)}"
    nbformat.validate(nb)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_parameters_readable_by_papermill(path: Path) -> None:
    import papermill

    nb = nbformat.read(str(path), as_version=4)
    src = _params_cells(nb)[0].source
    assigned = [m.group(1) for m in re.finditer(r"^([A-Za-z_]\w*)\s*(?::[^=]+)?=", src, re.MULTILINE)]
    # papermill skips any line holding more than one '=' (e.g. '= ' inside a comment)
    bad = [ln for ln in src.splitlines() if ln.count("=") > 1 and not ln.lstrip().startswith("#")]
    assert not bad, f"{path.name}: papermill cannot parse {bad}; keep '=' out of parameter comments"
    found = set(papermill.inspect_notebook(str(path)))
    assert set(assigned) <= found, f"{path.name}: papermill does not see parameters {set(assigned) - found}"
    if path.parent.name == "notebooks":
        assert {"run_dir", "as_of"} <= found, f"{path.name}: every stage takes run_dir and as_of parameters"


def test_strip_notebook(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "smartrouter", "display_name": "x"}, "widgets": {"state": {}}})
    cell = nbformat.v4.new_code_cell("1 + 1", execution_count=3,
                                     outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=3)])
    nb.cells.append(cell)
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    assert strip_notebook(path) is True
    data = json.loads(path.read_text())
    assert data["cells"][0]["outputs"] == [] and data["cells"][0]["execution_count"] is None
    assert "widgets" not in data["metadata"]
    assert strip_notebook(path) is False  # idempotent
