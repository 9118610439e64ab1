"""Faults of the machine, not of the input, end in one line naming the path, leave nothing that looks finished, and
the same command resumes once the fault is gone."""

import os
import subprocess
import sys

import pytest

from steel_tpu.data import synth

pytestmark = pytest.mark.skipif(
    subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0,
    reason="unshare -rm (a user + mount namespace for a small tmpfs) is not available")


def test_a_full_disk_is_one_line_naming_the_file_and_the_rerun_resumes(tmp_path):
    data, mount = tmp_path / "data", tmp_path / "small"
    synth.synthesize(str(data), n_train=24, n_test=0, seed=0)  # ~2 MB of JPEGs: more than the tmpfs first holds
    mount.mkdir()
    out = f"{mount}/shards"
    command = f'"{sys.executable}" -m steel_tpu shards --data "{data}" --out "{out}" --folds 2 --shard-mb 0.5'
    # In a user + mount namespace of its own (no root needed): a 600 KB tmpfs fills up during the build; the folder
    # is listed; the tmpfs is made larger (space freed) and the same command runs again.
    script = (f'mount -t tmpfs -o size=600k tmpfs "{mount}" || exit 99; {command}; echo "first exit $?"; '
              f'echo "listing: $(ls -A "{out}" | tr "\\n" " ")"; mount -o remount,size=20m "{mount}"; {command}; '
              f'echo "second exit $?"; echo "listing: $(ls -A "{out}" | tr "\\n" " ")"')
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    run = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600, env=env)
    out_lines, errors = run.stdout.splitlines(), run.stderr.strip().splitlines()
    assert "first exit 2" in out_lines and "second exit 0" in out_lines, run.stdout + run.stderr
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert errors[0].startswith(f"steel-tpu shards: error: No space left on device: {out}/"), errors[0]
    assert "free space there, then run the same command again; it resumes" in errors[0]
    first, second = [line for line in out_lines if line.startswith("listing: ")]
    assert "manifest.json" not in first and "_plan.json" in first  # unfinished, and says so to `verify`
    assert "manifest.json" in second and "_plan.json" not in second
