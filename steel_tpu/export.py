"""`steel-tpu export`: a workdir's fold models, thresholds and this package as a kit that scores offline (Kaggle)."""

import base64
import hashlib
import io
import json
import os
import pathlib
import posixpath
import tempfile
import time
import zipfile

import numpy as np

import steel_tpu
from steel_tpu import config as config_lib
from steel_tpu import kit, members, postprocess, storage, system
from steel_tpu import tasks as tasks_lib
from steel_tpu.keras_api import keras
from steel_tpu.workdir import Workdir, read_thresholds

NAME = "steel_tpu"
# What setup.cfg declares; the kit's wheel carries it so `pip install KIT/*.whl` gives the same command.
CONSOLE_SCRIPTS = "steel-tpu = steel_tpu.cli:main"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the oldest time a zip can hold: the same package bytes give the same wheel bytes
_SCORE_TEMPLATE = pathlib.Path(__file__).with_name("kit_score.py")


def wheel_name(version=steel_tpu.__version__):
    return f"{NAME}-{version}-py3-none-any.whl"


def _hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel():
    """(file name, bytes): a py3-none-any wheel (PEP 427) of the running steel_tpu package, its .py files as imported.

    Built from the imported package rather than with `pip wheel` of a source tree: a package installed from a git
    URL or a wheel (Colab) has no source tree, and this needs no build tools and no network. No Requires-Dist: the
    kit runs on what the scoring image has (TensorFlow, numpy, PIL, fsspec...), installed with --no-deps.
    """
    root = pathlib.Path(steel_tpu.__file__).parent
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    version = steel_tpu.__version__
    info = f"{NAME}-{version}.dist-info"
    entries = [(f"{NAME}/{p.relative_to(root).as_posix()}", p.read_bytes()) for p in files]
    entries += [
        (f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {version}\n"
                             f"Summary: {steel_tpu.__doc__.strip()}\n".encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: steel_tpu.export\nRoot-Is-Purelib: true\n"
                          b"Tag: py3-none-any\n"),
        (f"{info}/entry_points.txt", f"[console_scripts]\n{CONSOLE_SCRIPTS}\n".encode()),
    ]
    record = "".join(f"{name},{_hash(data)},{len(data)}\n" for name, data in entries) + f"{info}/RECORD,,\n"
    entries.append((f"{info}/RECORD", record.encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            item = zipfile.ZipInfo(name, date_time=_EPOCH)
            item.external_attr = 0o644 << 16
            item.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(item, data)
    return wheel_name(version), buf.getvalue()


def _planned(out, *, models, wheel):
    """Every file the export writes, by exact path."""
    names = [kit.CONFIG, kit.THRESHOLDS, kit.SCORE, wheel, kit.KIT_JSON]
    return [storage.join(out, n) for n in names] + [storage.join(out, kit.MODELS, n) for n in models]


def _refuse_foreign(out, planned):
    """Promise 1: an --out holding anything this export does not write is refused, its files named."""
    planned, foreign = set(planned), []
    models_dir = storage.join(out, kit.MODELS)
    for folder in (out, models_dir):
        if not storage.isdir(folder):
            continue
        for path in storage.listdir(folder):
            path = path.rstrip("/")
            if path not in planned and not (folder == out and path == models_dir):
                foreign.append(path)
    if foreign:
        shown = ", ".join(posixpath.basename(p) for p in sorted(foreign)[:5])
        raise FileExistsError(f"{out}: holds {len(foreign)} file(s) this export would not write ({shown}"
                              f"{', ...' if len(foreign) > 5 else ''}); export into a new or empty folder")


def _keras_file(model):
    """The model as `.keras` bytes, reloaded and compared weight by weight: a kit never holds a file that does not
    load back (a custom layer missing from keras.saving's registry fails here, not on Kaggle)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        again = keras.saving.load_model(path, compile=False)
        mismatched = [w.name for w, v in zip(model.weights, again.weights)
                      if not np.array_equal(np.asarray(w), np.asarray(v))]
        if len(again.weights) != len(model.weights) or mismatched:
            raise ValueError(f"model {model.name}: its .keras file reloads with other weights ({mismatched[:3]})")
        with open(path, "rb") as f:
            return f.read()


def export(*, workdir, out, thresholds=None, folds=None):
    """Write the kit of `workdir` into `out` (new, empty, or an earlier kit of the same files); returns a summary.

    `thresholds`: a thresholds.json (default: the workdir's; one is required: a kit scores with tuned values);
    `folds`: only these fold models (default: every completed one). Classifiers go in only when the thresholds
    gate on them, as predict would load them.
    """
    start = time.perf_counter()
    system.refuse(workdir, command="export")
    wd, out = Workdir(workdir), str(out).rstrip("/")
    cfg = wd.config()
    path = thresholds or wd.thresholds_path()
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no thresholds: run `steel-tpu tune --workdir {workdir}` first "
                                "(or give --thresholds)")
    doc = read_thresholds(path)
    members.check_tuned_for(doc, where=path, work=workdir)  # an ensemble's thresholds do not fit one workdir's models
    pp = postprocess.from_thresholds(doc, where=path)  # a thresholds file predict would refuse is refused now
    chosen = {t: [f for f in wd.completed_folds(t) if folds is None or f in folds]
              for t in (("classify", "segment") if pp.gate else ("segment",))}
    missing = sorted(set(folds or ()) - set(chosen["segment"]))
    if missing or not chosen["segment"]:
        raise FileNotFoundError(f"{workdir}: segment folds {missing or 'any'} not complete: nothing to export")
    if pp.gate and not chosen["classify"]:
        raise FileNotFoundError(f"{path} gates on a classifier, but {workdir} has no completed classify folds")
    models = [kit.model_name(t, f) for t, fs in chosen.items() for f in fs]
    wheel, wheel_bytes = build_wheel()
    _refuse_foreign(out, _planned(out, models=models, wheel=wheel))

    # Float32 files whatever policy this process trained under: the kit scores on Kaggle's CPU or GPU.
    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        for task_name, fs in chosen.items():
            task = tasks_lib.make(task_name, cfg)
            for fold in fs:
                model = task.build_model(pretrained=False)
                wd.load_weights(model, task_name, fold)
                storage.write_bytes(storage.join(out, kit.MODELS, kit.model_name(task_name, fold)), _keras_file(model))
    finally:
        keras.mixed_precision.set_global_policy(policy)
    storage.write_bytes(storage.join(out, wheel), wheel_bytes)
    storage.write_text(storage.join(out, kit.CONFIG), config_lib.to_json(cfg))
    storage.write_text(storage.join(out, kit.THRESHOLDS), json.dumps(doc, indent=2) + "\n")
    score = _SCORE_TEMPLATE.read_text().replace("{{WHEEL}}", wheel).replace("{{VERSION}}", steel_tpu.__version__)
    storage.write_text(storage.join(out, kit.SCORE), score)
    info = {"format": kit.FORMAT, "package": wheel, "version": steel_tpu.__version__,
            "models": {t: fs for t, fs in chosen.items()}, "workdir": str(workdir), "thresholds": str(path)}
    # Last: a folder is a kit only once everything in it is written.
    storage.write_text(storage.join(out, kit.KIT_JSON), json.dumps(info, indent=2) + "\n")
    size = sum(storage.size(p) for p in _planned(out, models=models, wheel=wheel))
    print(f"export: {len(models)} model(s) ({', '.join(models)}), {wheel}, thresholds and score.py -> {out} "
          f"({size / 1e6:.1f} MB, {time.perf_counter() - start:.1f}s); on Kaggle: "
          f"python {kit.SCORE} --images TEST_IMAGES --out submission.csv")
    return {"out": out, "models": models, "wheel": wheel, "bytes": size}
