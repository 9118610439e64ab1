import argparse
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

import steel_tpu
from steel_tpu import cli
from steel_tpu.cli.errors import user_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("synth", "evaluate", "shards", "import-seed004", "verify", "train", "tune", "predict", "report", "env",
            "export", "pseudo", "compare", "rescore")
# Lines TensorFlow / absl write from C++ (and absl's pre-init notice): none may reach a user's log.
NATIVE = re.compile(r"cuInit|oneDNN|cpu_feature_guard|I tensorflow|W tensorflow|absl::InitializeLog|"
                    r"^[IWE]\d{4} \d\d:\d\d:", re.M)


def _run(*args, timeout=300):
    # As a user runs it: conftest's TF_CPP_MIN_LOG_LEVEL is not inherited.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _subparser(name):
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def _readme_commands():
    """Every `steel-tpu ...` / `python tools/make_tfrecords.py ...` line of the README's bash blocks, as arguments
    for build_parser(): [optional] brackets dropped, a|b alternatives -> a, N -> 2, `...` dropped."""
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read(), re.S)
    commands = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["steel-tpu"]:
            args = words[1:]
        elif words[:2] == ["python", "tools/make_tfrecords.py"]:
            args = ["shards", *words[2:]]
        else:
            continue
        args = [w.strip("[]").split("|")[0] for w in args if w.strip("[]") not in ("...", "")]
        commands.append((line.strip(), ["2" if w == "N" else w for w in args]))
    return commands


def test_readme_commands_parse():
    commands = _readme_commands()
    assert len(commands) >= 12 and {args[0] for _, args in commands} == set(COMMANDS)
    for line, args in commands:
        try:
            cli.parse(args)
        except SystemExit:
            pytest.fail(f"README command does not parse: {line}")


def test_preset_docstring_commands_parse():
    from steel_tpu import config

    for name, fn in {**config.PRESETS, **config.SYSTEMS}.items():
        args = fn.__doc__.strip().splitlines()[0].split()[1:]
        assert cli.build_parser().parse_args(args).config == name


def test_version_and_python_m():
    proc = _run("-m", "steel_tpu", "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"steel-tpu {steel_tpu.__version__}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_an_example_defaults_and_help_for_every_option(name):
    parser = _subparser(name)
    text = parser.format_help()
    assert f"example:\n  steel-tpu {name} --" in text
    cli.build_parser().parse_args(cli.COMMANDS[name].example.split()[1:])  # the example itself parses
    for action in parser._actions:
        assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
        if action.default not in (None, False, [], argparse.SUPPRESS) and not action.required:
            assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)


def test_train_needs_an_explicit_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--shards", "s", "--workdir", "w"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--config" in err and "tiny,colab-tpu,full" in err


@pytest.mark.parametrize("command", ["train", "predict"])
def test_folds_are_comma_separated_everywhere(command):
    base = {"train": ["train", "--shards", "s", "--workdir", "w", "--config", "tiny"],
            "predict": ["predict", "--workdir", "w", "--images", "i", "--out", "o.csv"]}[command]
    assert cli.build_parser().parse_args([*base, "--folds", "0,2,1"]).folds == (0, 2, 1)
    assert cli.build_parser().parse_args([*base, "--folds", "3"]).folds == (3,)
    for bad in ("0,0", "-1", "a", "0,", "1.5"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args([*base, "--folds", bad])


@pytest.mark.parametrize("args", [
    ["shards", "--data", "d", "--out", "o", "--folds", "1"], ["shards", "--data", "d", "--out", "o", "--shard-mb", "0"],
    ["shards", "--data", "d", "--out", "o", "--workers", "0"], ["synth", "--out", "o", "--train", "-1"],
    ["predict", "--workdir", "w", "--images", "i", "--out", "o", "--chunk-size", "0"],
    ["predict", "--workdir", "w", "--images", "i", "--out", "o", "--batch-size", "0"],
    ["verify", "s"],  # the shard folder is --shards, as everywhere
])
def test_numeric_bounds_and_vocabulary(args):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(args)


def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    missing = str(tmp_path / "nope.csv")
    assert cli.main(["evaluate", "--pred", missing, "--truth", missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith("steel-tpu evaluate: error: ") and "nope.csv" in err and err.count("\n") == 1
    with pytest.raises(FileNotFoundError):
        cli.main(["evaluate", "--pred", missing, "--truth", missing, "--debug"])
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "evaluate", "--pred", missing, "--truth", missing])


def test_which_errors_are_the_users():
    assert user_error(PermissionError(13, "Permission denied", "/ro/out.csv")) == "Permission denied: /ro/out.csv"
    assert user_error(IsADirectoryError(21, "Is a directory", "/tmp")) == "Is a directory: /tmp"
    assert "not valid JSON" in user_error(json.JSONDecodeError("Expecting value", "x", 0))
    assert user_error(ValueError("manifest.json: bad")) == "manifest.json: bad"
    # Anything else is a bug: the traceback is what helps.
    assert user_error(RuntimeError("boom")) is None and user_error(KeyError("k")) is None
    assert user_error(OSError("no filename")) is None


def test_tensorflow_errors_are_one_line():
    tf = pytest.importorskip("tensorflow")
    error = tf.errors.DataLossError(None, None, "corrupted record at 12 in shard-0.tfrec\n\t [[{{node x}}]]")
    assert user_error(error) == "DataLossError: corrupted record at 12 in shard-0.tfrec"
    assert user_error(tf.errors.InternalError(None, None, "bug")) is None


def test_host_only_cli_does_not_import_tensorflow():
    code = "import sys, steel_tpu.cli, steel_tpu.config; print('tensorflow' in sys.modules)"
    assert _run("-c", code).stdout.strip() == "False"


def test_piped_output_has_no_carriage_returns_or_native_logs(tmp_path):
    data, shards = str(tmp_path / "data"), str(tmp_path / "shards")
    for args in (["synth", "--out", data, "--train", "12", "--test", "2"],
                 ["shards", "--data", data, "--out", shards, "--folds", "2", "--shard-mb", "0.5"],
                 ["verify", "--shards", shards, "--data", data]):
        proc = _run("-m", "steel_tpu", *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        output = proc.stdout + proc.stderr
        assert "\r" not in output and not NATIVE.search(output), output[-2000:]
        if args[0] == "shards":
            assert re.search(r"^shards: 12/12 img in ", proc.stdout, re.M)  # one plain progress line


def test_native_log_lines_are_dropped_and_progress_is_plain():
    # XLA's first compile logs through absl whatever TF_CPP_MIN_LOG_LEVEL says: the stderr filter must drop it.
    code = ("from steel_tpu import console; console.quiet_tensorflow(); console.drop_native_logs()\n"
            "import tensorflow as tf; tf.function(lambda x: x * 2, jit_compile=True)(tf.ones(3))\n"
            "with console.Progress(5, desc='epoch 1/1', unit='step', lines=1) as bar:\n"
            "    for _ in range(5): bar.update(1, loss=0.5)\n"
            "import sys; print('kept', file=sys.stderr)\n")
    proc = _run("-c", code)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "\r" not in output and not NATIVE.search(output), output
    assert re.fullmatch(r"epoch 1/1: 5/5 step in \S+s \(\S+ step/s, loss 0.5\)\n", proc.stdout)
    assert proc.stderr == "kept\n"  # Python's own stderr passes the filter untouched


def test_options_a_beam_run_cannot_honour_are_refused_not_dropped(capsys):
    base = ["predict", "--workdir", "w", "--images", "i", "--out", "o.csv", "--runner", "DirectRunner"]
    for extra in (["--chunk-size", "5"], ["--device", "cpu"]):
        with pytest.raises(SystemExit) as stop:
            cli.parse([*base, *extra])
        assert stop.value.code == 2 and f"{extra[0]} cannot be used with --runner" in capsys.readouterr().err
    assert cli.parse(base).runner == "DirectRunner"  # without them it parses


def test_every_command_that_runs_models_takes_device_and_workdir_repeated():
    for name in ("train", "rescore", "predict", "pseudo", "env"):
        assert any("--device" in flags for flags, _ in cli.COMMANDS[name].arguments), name
    for name in ("tune", "rescore", "predict", "pseudo", "export"):
        (options,) = [o for flags, o in cli.COMMANDS[name].arguments if "--workdir" in flags]
        assert options["action"] == "append", name
