"""The CLI starts light: `--version` and the simulator's commands' help import no numpy, pyarrow, simpy or torch.

Start-up time itself is measured by a script (README of tests/bench), not here: this checks the cause.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("numpy", "pyarrow", "simpy", "torch", "scipy", "matplotlib")


@pytest.mark.parametrize("argv", [["--version"], ["simulate", "--help"], ["compare", "--help"], ["project", "--help"],
                                  ["models", "--help"], ["validate", "--help"]])
def test_startup_imports_no_heavy_library(argv):
    code = (f"import sys\nfrom tokenjoule.cli import main\ncode = main({argv!r})\n"
            f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 []"


def test_a_user_error_still_prints_one_line():
    # the error types are imported when an error is reported, not at start-up: the declared ones still end in a line
    from typer.testing import CliRunner

    from tokenjoule.cli import app

    result = CliRunner().invoke(app, ["simulate", "--policy", "bogus"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --policy 'bogus': must be one of static, continuous, chunked"
