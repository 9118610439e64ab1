"""`steel-tpu export`: a model source's fold models, thresholds and this package as a kit that scores offline."""

import base64
import hashlib
import io
import json
import os
import pathlib
import posixpath
import time
import zipfile

import steel_tpu
from steel_tpu import config as config_lib
from steel_tpu import storage
from steel_tpu import tasks as tasks_lib
from steel_tpu.formats import kit, system, weights
from steel_tpu.formats import thresholds as thresholds_format
from steel_tpu.keras_api import keras
from steel_tpu.scoring import members
from steel_tpu.scoring.source import ModelSource

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
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: steel_tpu.scoring.export\nRoot-Is-Purelib: true\n"
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


def _planned(out, *, folders, wheel):
    """Every file the export writes, by exact path: the kit's own files, and per model-set folder (`folders`:
    {folder: model file names}) its config and models."""
    top = [storage.join(out, n) for n in (kit.THRESHOLDS, kit.SCORE, wheel, kit.KIT_JSON)]
    return top + [path for folder, models in folders.items() for path in
                  [storage.join(folder, kit.CONFIG)] + [storage.join(folder, kit.MODELS, n) for n in models]]


def _refuse_foreign(out, planned):
    """Promise 1: an --out holding anything this export does not write is refused, its files named. The folders on
    the way to a planned file (a member's, its models/) are looked into; any other entry is foreign."""
    planned, folders = set(planned), set()
    for path in planned:
        parent = storage.parent(path)
        while len(parent) > len(out):
            folders.add(parent)
            parent = storage.parent(parent)
    foreign, todo = [], [out]
    while todo:
        folder = todo.pop()
        if not storage.isdir(folder):
            continue
        for path in (p.rstrip("/") for p in storage.listdir(folder)):
            if path in folders:
                todo.append(path)
            elif path not in planned:
                foreign.append(path)
    if foreign:
        shown = ", ".join(posixpath.basename(p) for p in sorted(foreign)[:5])
        raise FileExistsError(f"{out}: holds {len(foreign)} file(s) this export would not write ({shown}"
                              f"{', ...' if len(foreign) > 5 else ''}); export into a new or empty folder")


def _member_names(source):
    """A kit folder name per member: a system's own member names; m0, m1, ... for several workdirs; none for one."""
    if source.kind == "workdir":
        return [None]
    if source.kind == "system":
        return list(system.read(source.home)[1])
    return [f"m{i}" for i in range(len(source.stores))]


def _write_models(member, folder, *, chosen):
    """Write `member`'s config and its `chosen` fold models' weights ({task: folds}) under `folder`, each loaded
    into the model the config builds first: a kit never holds weights its own builders cannot take."""
    cfg = member.config
    for task_name, fs in chosen.items():
        task = tasks_lib.make(task_name, cfg)
        for fold in fs:
            model = task.build_model(pretrained=False)
            member.models.load_weights(model, task_name, fold)
            weights.save(model, storage.join(folder, kit.MODELS, kit.model_name(task_name, fold)))
    storage.write_text(storage.join(folder, kit.CONFIG), config_lib.to_json(cfg))


def export(*, workdir, out, thresholds=None, folds=None):
    """Write the kit of `workdir` into `out` (new, empty, or an earlier kit of the same files); returns a summary.

    `workdir`: a scoring.source.ModelSource or what resolves into one: one workdir (a format-3 kit), or a system or
    several workdirs (a format-4 kit: one folder per member, scored as the same ensemble). `thresholds`: a
    thresholds.json (default: the source's own; one is required: a kit scores with tuned values); `folds`: only
    these fold models (default: every completed one). Classifiers go in only when the thresholds need them, as
    predict would load them.
    """
    start = time.perf_counter()
    source = ModelSource.resolve(workdir)
    source.workdirs(command="export")  # a kit is exported already
    out = str(out).rstrip("/") if storage.is_gcs(out) else os.path.abspath(out)
    found = source.thresholds(thresholds, required_by="export")
    plan = source.plan(thresholds=found, folds=folds)  # what predict would load, checked as predict checks it
    names = _member_names(source)
    folders = {name: out if name is None else storage.join(out, name) for name in names}
    by_path = {m.path: m for m in plan.members}
    files = {folders[n]: [kit.model_name(t, f) for t, fs in by_path[s.path].folds.items() for f in fs]
             for n, s in zip(names, source.stores) if s.path in by_path}
    wheel, wheel_bytes = build_wheel()
    _refuse_foreign(out, _planned(out, folders=files, wheel=wheel))

    # Float32 files whatever policy this process trained under: the kit scores on Kaggle's CPU or GPU.
    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        for name, store in zip(names, source.stores):
            if store.path in by_path:
                _write_models(by_path[store.path], folders[name], chosen=by_path[store.path].folds)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    storage.write_bytes(storage.join(out, wheel), wheel_bytes)
    thresholds_format.write(storage.join(out, kit.THRESHOLDS), found)
    score = _SCORE_TEMPLATE.read_text().replace("{{WHEEL}}", wheel).replace("{{VERSION}}", steel_tpu.__version__)
    storage.write_text(storage.join(out, kit.SCORE), score)
    info = {"package": wheel, "version": steel_tpu.__version__, "workdir": str(source), "thresholds": found.path}
    if names == [None]:
        info = {"format": kit.WRITTEN["root"], **info, "models": plan.members[0].folds}
    else:
        info = {"format": kit.WRITTEN["members"], **info, "tuned_for": source.tuned_for, "members": [
            {"name": name, "workdir": members.normalized(m.path), "models": m.folds,
             "identity": {task: {str(f): list(item) for f, item in zip(m.folds[task], ident)}
                          for task, ident in m.identity.items()}}
            for name, m in ((n, by_path[s.path]) for n, s in zip(names, source.stores) if s.path in by_path)]}
    # Last: a folder is a kit only once everything in it is written.
    storage.write_text(storage.join(out, kit.KIT_JSON), json.dumps(info, indent=2) + "\n")
    written = _planned(out, folders=files, wheel=wheel)
    size = sum(storage.size(p) for p in written)
    models = [f"{'' if n is None else n + '/'}{m}" for n in names for m in files.get(folders[n], [])]
    print(f"export: {len(models)} model(s) ({', '.join(models)}), {wheel}, thresholds and score.py -> {out} "
          f"({size / 1e6:.1f} MB, {time.perf_counter() - start:.1f}s); on Kaggle: "
          f"python {kit.SCORE} --images TEST_IMAGES --out submission.csv")
    return {"out": out, "models": models, "wheel": wheel, "bytes": size}
