"""The ssn command line."""

import subprocess
import sys

import pytest

from ssn import __version__
from ssn.apps.cli import main


def test_info_prints_versions_and_backbones(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"ssn {__version__}" in out and "backbones: deepmedic, phiseg-unet, unet" in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: ssn" in capsys.readouterr().out


def test_a_wrong_flag_exits_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["--no-such-flag"])
    assert exit_info.value.code == 2


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "ssn", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"ssn {__version__}"
