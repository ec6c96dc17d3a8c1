"""`make run` and `make report` take the study's config from CONFIG (the default: config/config.yaml), so that a
report is made with the config of its run: a report of another config's results lists figures that are not there."""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def snakemake_command(target: str, *variables: str) -> list[str]:
    """The Snakemake command line that `make <target>` would run (make -n: nothing runs)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    printed = subprocess.run(["make", "-n", "-C", str(ROOT), target, *variables], capture_output=True, text=True,
                             check=True).stdout
    lines = [line for line in printed.splitlines() if "/snakemake " in line]
    assert len(lines) == 1, printed
    return shlex.split(lines[0])


@pytest.mark.parametrize("target", ["run", "report"])
def test_the_config_of_run_and_report_is_the_one_given(target):
    command = snakemake_command(target, "CONFIG=studies/my.yaml")
    assert [command[i + 1] for i, arg in enumerate(command) if arg == "--configfile"] == ["studies/my.yaml"]
    default = snakemake_command(target)
    assert [default[i + 1] for i, arg in enumerate(default) if arg == "--configfile"] == ["config/config.yaml"]
    if target == "report":
        assert command[command.index("--report") + 1] == "report.html"
