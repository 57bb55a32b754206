"""The ``frcnn`` group: every command of the contract is listed, errors are one clean line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from frcnn_cli import __version__
from frcnn_cli.cli.main import cli

CONTRACT_COMMANDS = ["prepare", "train-rpn", "dump-proposals", "train-detector", "train", "detect", "eval",
                     "bench", "export", "convert", "demo"]


def test_help_lists_every_command_of_the_contract_in_workflow_order():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == CONTRACT_COMMANDS


def test_prepare_lists_its_three_sources():
    result = CliRunner().invoke(cli, ["prepare", "--help"])
    assert result.exit_code == 0
    for sub in ("voc", "folder", "synth"):
        assert f"  {sub} " in result.output


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_python_dash_m_runs_the_same_group():
    done = subprocess.run([sys.executable, "-m", "frcnn_cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    assert "train-detector" in done.stdout


def test_a_library_error_becomes_one_error_line_and_exit_code_without_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["train-rpn", "--data", str(tmp_path / "missing.json"),
                                      "--out", str(tmp_path / "x.pt")])
    assert result.exit_code != 0
    assert result.output.startswith("Error:")
    assert "missing.json" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.pt").exists()


def test_the_public_api_is_importable_from_the_package():
    import frcnn_cli

    for name in frcnn_cli.__all__:
        assert getattr(frcnn_cli, name) is not None, name
    assert frcnn_cli.get_preset("zf").rpn.conv_channels == 256


def test_the_command_line_starts_without_loading_torch_numpy_or_pil():
    code = "import sys, frcnn_cli.cli.main; print([m for m in ('torch', 'numpy', 'PIL') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", "a CLI module imports these at start-up: import them inside the command"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_results_to_a_full_standard_output_are_one_error_line_not_a_traceback(synth_set, tmp_path,
                                                                                 assert_clean_error):
    """`frcnn eval --json > /dev/full` (or a full disk) ended in click.echo's OSError traceback, printed twice (again
    by Python's flush at exit). A closed pipe (`| head`) stays click's quiet exit."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "frcnn_cli", "prepare", "merge", *map(str, synth_set), "--out",
                               str(tmp_path / "m.json")], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    done.stdout = ""
    assert_clean_error(done, "cannot write to the standard output: No space left on device", "redirect it")
    assert "Exception ignored" not in done.stderr
