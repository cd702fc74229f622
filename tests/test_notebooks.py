"""The notebooks run top to bottom headless (quick mode) and are committed without outputs.

Each notebook is executed from an in-memory copy with nbclient, in a fresh temporary working
directory (so its ``_out/`` files never land in the repository), under a kernel started from
this interpreter: a kernelspec written into a temporary folder runs ``sys.executable -m
ipykernel_launcher`` with ``GRADVAR_QUICK=1`` and ``MPLBACKEND=Agg``, whatever ``python`` on
PATH or a user-level ``python3`` kernelspec would point to.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
KERNEL_ENV = {"GRADVAR_QUICK": "1", "MPLBACKEND": "Agg"}
ENVIRONMENT_PROBE = "import sys\nprint(sys.prefix)"


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def _kernel_manager(folder: Path) -> Any:
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "gradvar test kernel",
                "language": "python",
                "env": KERNEL_ENV,
            }
        )
    )
    specs = KernelSpecManager(kernel_dirs=[str(folder / "kernels")])
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def _text(outputs: list[Any]) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


def _widget_errors(nb: Any) -> list[str]:
    """Errors raised inside ipywidgets callbacks (interact catches them into an Output widget)."""
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    errors = []
    for model in state.get("state", {}).values():
        for output in model.get("state", {}).get("outputs", []):
            if output.get("output_type") == "error":
                errors.append(f"{output.get('ename')}: {output.get('evalue')}")
    return errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_headless_in_quick_mode(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(ENVIRONMENT_PROBE))
    work = tmp_path / "cwd"
    work.mkdir()
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
    )
    before = sorted(NOTEBOOKS_DIR.rglob("*"))
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    assert _text(nb.cells[-1].outputs).strip() == sys.prefix, "the kernel ran outside this venv"
    assert not _widget_errors(nb), _widget_errors(nb)
    assert sorted(NOTEBOOKS_DIR.rglob("*")) == before, "the notebook wrote next to itself"


def test_notebooks_exist() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01-probe-a-model.ipynb",
        "02-explore-checkpoints.ipynb",
        "03-fit-a-schedule-and-train.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_is_stripped(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name", "python3") == "python3"
    assert "widgets" not in nb.metadata, "saved widget state: strip the notebook"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {index} has outputs"
            assert cell.execution_count is None, f"cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_first_code_cell_sets_quick_mode_and_thp_before_torch(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    first = next(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert 'QUICK = os.environ.get("GRADVAR_QUICK") == "1"' in first
    thp = first.find('os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")')
    torch_import = re.search(r"^(import torch|from torch)", first, flags=re.M)
    assert thp >= 0 and torch_import is not None and thp < torch_import.start()
    for cell in nb.cells:  # the public API only
        if cell.cell_type == "code":
            assert not re.search(r"gradvar(\.\w+)*\._", cell.source), cell.source
