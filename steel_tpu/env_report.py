"""`steel-tpu env`: versions, devices, the strategy a run would get, gs:// credentials, what fits, what is wrong."""

import os
from pathlib import Path

import tensorflow as tf

from steel_tpu import backend, config, install, keras_api

from steel_tpu.config import resolve
from steel_tpu.device import distribute


def _credentials(environ):
    """Whether gs:// credentials are usable, without a network call: only credential files are loaded."""
    explicit = environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    adc = Path(environ.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud") / \
        "application_default_credentials.json"
    path = explicit or (str(adc) if adc.exists() else None)
    if path is None:
        # google.auth.default() would now ask the GCE metadata server (a network call); Colab and Cloud TPU VMs
        # answer there, so this is "not checked", not "missing".
        return {"usable": None, "source": None,
                "note": "no credential file (GOOGLE_APPLICATION_CREDENTIALS or gcloud application-default); on Colab "
                        "run google.colab.auth.authenticate_user(), on a Cloud TPU VM the VM's service account "
                        "answers (not checked here: it needs a network call)"}
    try:
        import google.auth  # gcsfs' dependency; imported here so the report works without it

        credentials, project = google.auth.load_credentials_from_file(path)
        return {"usable": True, "source": path, "note": f"{type(credentials).__name__}, project {project or 'unset'}"}
    except Exception as error:  # google.auth raises several unrelated types for a bad file
        return {"usable": False, "source": path, "note": f"{type(error).__name__}: {str(error).splitlines()[0]}"}


def _presets(kind, replicas):
    """Per preset: "fits", or why it does not run here (TPU presets need one; a fixed batch must split)."""
    fits = {}
    for name in (*config.PRESETS, *config.SYSTEMS):
        bad = []
        for cfg in config.members_of(name).values():  # a system fits when each of its members does
            refused = backend.refusal(cfg, tasks=cfg.tasks, running=keras_api.backend())
            if refused:
                bad.append(refused)
            if cfg.device == "tpu" and kind != "tpu":
                bad.append("a TPU preset (device=tpu) and this run is not on a TPU (--set device=gpu|cpu runs it "
                           "here on purpose)")
            try:
                resolve.resolve_for(cfg, replicas=replicas)
            except ValueError as error:
                bad.append(str(error))
        fits[name] = "; ".join(dict.fromkeys(bad)) or "fits"
    return fits


def env_report(*, device=None, prefer=None, require_tpu=False, environ=None, dev="/dev", distributions=None):
    """Everything `steel-tpu env` prints, as a dict. The strategy is what select_strategy(prefer=, require_tpu=)
    gives (or `device`, when given); `environ`, `dev` and `distributions` simulate a host's facts."""
    environ = os.environ if environ is None else environ
    host = install.probe(environ=environ, dev=dev, distributions=distributions)
    problems = []
    if len(host.tensorflow) > 1:
        problems.append("several TensorFlow distributions are installed and overwrite each other: "
                        + ", ".join(f"{n} {v}" for n, v in sorted(host.tensorflow.items()))
                        + "; keep one (pip uninstall the others, then reinstall the one you want)")
    if host.tpu and not {"tensorflow-tpu", "tf-nightly-tpu"} & set(host.tensorflow):
        if host.jax:
            if keras_api.backend() != "jax":
                problems.append(f"this TPU is JAX's ({', '.join(f'{n} {v}' for n, v in sorted(host.jax.items()))} "
                                f"on libtpu {host.libtpu or 'its own'}) and no tensorflow-tpu is installed, so "
                                "TensorFlow cannot drive it: run with --backend jax (what auto chooses here)")
        else:
            problems.append("this looks like a TPU host but no tensorflow-tpu is installed: pip uninstall the "
                            "TensorFlow that is there, then `python -m steel_tpu.install --tensorflow-tpu`")
    tf_tpu = host.tensorflow.get("tensorflow-tpu", "")
    if tf_tpu.startswith(install.TF_MINOR) and host.libtpu not in (None, install.LIBTPU_VERSION):
        problems.append(f"tensorflow-tpu {tf_tpu} with libtpu {host.libtpu}: it was released with libtpu "
                        f"{install.LIBTPU_VERSION} (pip install libtpu=={install.LIBTPU_VERSION})")
    strategy = {"backend": None, "strategy": None, "device": None, "replicas": None}
    try:
        device = device or distribute.select_strategy(prefer=prefer, require_tpu=require_tpu, verbose=False)
        strategy = {k: v for k, v in distribute.describe(device).items() if k in strategy}
    except distribute.TPUUnavailable as error:
        problems.append(str(error))
    credentials = _credentials(environ)
    if credentials["usable"] is False:
        problems.append(f"gs:// credentials in {credentials['source']} do not load: {credentials['note']}")
    presets = _presets(strategy["device"], strategy["replicas"]) if strategy["device"] else {}
    return {
        "tensorflow": tf.__version__, "tensorflow_distributions": host.tensorflow, "keras": keras_api.describe(),
        "libtpu": host.libtpu, "tpu_signals": list(host.tpu_signals), "gpu_signals": list(host.gpu_signals),
        "devices": sorted(f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}" for d in tf.config.list_logical_devices()),
        **strategy, "gcs_credentials": credentials, "presets": presets,
        "recommended_preset": next((n for n in ("colab-tpu", "tiny") if presets.get(n) == "fits"), None),
        "problems": problems,
    }


def format_report(report):
    """The report as readable lines, problems last."""
    tf_dists = ", ".join(f"{n} {v}" for n, v in sorted(report["tensorflow_distributions"].items())) or "none"
    cred = report["gcs_credentials"]
    usable = {True: "usable", False: "NOT usable", None: "not checked"}[cred["usable"]]
    lines = [
        f"TensorFlow {report['tensorflow']} ({tf_dists}), {report['keras']}, "
        f"libtpu {report['libtpu'] or 'not installed'}",
        f"TPU signs: {'; '.join(report['tpu_signals']) or 'none'}; "
        f"GPU devices: {', '.join(report['gpu_signals']) or 'none'}",
        f"devices: {', '.join(report['devices'])}",
        f"strategy: {report['strategy'] or 'none'} on {report['device'] or '-'}, "
        f"{report['replicas'] or '-'} replica(s), backend {report['backend'] or '-'}",
        f"gs:// credentials: {usable}" + (f" ({cred['source']})" if cred["source"] else "") + f": {cred['note']}",
    ]
    lines += [f"preset {name}: {why}" for name, why in report["presets"].items()]
    lines.append(f"recommended preset: {report['recommended_preset'] or 'none'}")
    lines += [f"PROBLEM: {p}" for p in report["problems"]] or ["no problems found"]
    return lines
