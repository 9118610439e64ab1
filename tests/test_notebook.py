"""The Colab notebook: committed without outputs, and executed top to bottom headless on CPU with tiny parameters."""

import os
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import TINY_NO_XLA_OVERRIDES
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

from steel_tpu import metrics
from steel_tpu.formats import kaggle

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "colab" / "steel_tpu_colab.ipynb"
# Training the tiny models may take minutes a cell on a loaded 2-core machine.
CELL_TIMEOUT_S = 600


def _parameters_index(nb):
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected exactly one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def inject_parameters(nb, params):
    """Papermill's convention: a cell tagged `injected-parameters` right after the `parameters` cell."""
    source = "\n".join(f"{name} = {value!r}" for name, value in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(_parameters_index(nb) + 1, cell)


def _kernel_name(tmp_path, monkeypatch):
    """The `python3` kernel spec (jupyter_client runs a spec whose argv starts with `python` on sys.executable);
    where none is installed, a spec made here for this interpreter."""
    try:
        KernelSpecManager().get_kernel_spec("python3")
        return "python3"
    except NoSuchKernel:
        spec = tmp_path / "jupyter" / "kernels" / "steel-tpu-test"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(
            '{"argv": [%r, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "steel_tpu test",'
            ' "language": "python"}' % sys.executable)
        monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
        return "steel-tpu-test"


def _text_outputs(nb):
    return "\n".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)


def _png_outputs(nb):
    return sum("image/png" in o.get("data", {}) for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)


def test_committed_notebook_has_no_outputs_and_safe_defaults():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the notebook's outputs"
    params = {}
    exec(nb.cells[_parameters_index(nb)].source, {}, params)
    assert params["BUCKET"] == "" and params["CONFIG"] == "auto" and params["DEVICE"] == "auto"
    assert params["PACKAGE"].startswith("git+https://") and params["LOCAL_DATA"] == "" and not params["KAGGLE_DOWNLOAD"]
    for name in ("DATA_PREFIX", "WORK_PREFIX", "FOLDS", "OVERRIDES", "N_TRAIN", "N_TEST", "SEED"):
        assert name in params


@pytest.mark.slow
@pytest.mark.parametrize("chosen", ["tf", "jax"])  # jax: the path a Colab TPU runtime takes
def test_notebook_runs_headless_on_cpu(tmp_path, monkeypatch, chosen):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    root = tmp_path / "run"
    inject_parameters(nb, {
        "LOCAL_ROOT": str(root), "N_TRAIN": 32, "N_TEST": 8, "NUM_FOLDS": 2, "FOLDS": [0], "CONFIG": "tiny",
        "OVERRIDES": TINY_NO_XLA_OVERRIDES, "SEED": 0,
        "DEVICE": "cpu",  # the explicit choice: CI has no TPU, and a TPU-looking host must not stop the run
        "BACKEND": chosen,
    })
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    # The kernel is a fresh process: it finds the package from the checkout and has no 8-device CPU set-up.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=_kernel_name(tmp_path, monkeypatch),
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the cell on any error

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = _text_outputs(nb)
    assert "steel_tpu is already importable: nothing to install" in text
    assert "on cpu" in text and "config 'tiny'" in text and f"backend: {chosen}" in text
    assert "recommended preset: tiny" in text and "gs:// credentials:" in text  # the steel-tpu env report
    assert "OOF Dice" in text and "all empty: dice" in text
    # EDA (2 inline plots + samples), 2 training curves, tuning (Dice bars + 4 plots), predictions.
    assert _png_outputs(nb) >= 10

    data = root / "severstal"
    submission = kaggle.read_labels(root / "steel_tpu" / "submission.csv")
    test_ids = metrics.read_image_set(str(data / "test_images"))
    assert len(test_ids) == 8
    assert sorted(submission.image_ids) == sorted(test_ids)
    assert (root / "steel_tpu" / "work" / "thresholds.json").exists()
    assert (root / "steel_tpu" / "report" / "index.html").exists()
