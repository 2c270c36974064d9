"""The one error edge: declared user errors are one line and exit 2, anything else is a bug with its traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tokenjoule.cli import app, main

runner = CliRunner()


@pytest.mark.parametrize(("args", "needle"), [
    (["models", "show", "gpt-5"], "unknown model 'gpt-5'"),  # ConfigError
    (["simulate", "--synthetic", "n=10", "--cost", "roofline", "--tp", "3"], "--tp 3"),  # ConfigError, cost model
    (["trace", "stats", "/no/such/file.csv"], "/no/such/file.csv"),  # FileNotFoundError naming the file
    (["profile", "show", "no-such-profile"], "no-such-profile"),  # ProfileError
])
def test_user_errors_are_one_line_and_exit_2(args, needle):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_main_returns_2_and_prints_one_line(capsys):
    assert main(["models", "show", "gpt-5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'gpt-5'") and err.count("\n") == 1


def test_debug_reraises_user_errors(monkeypatch):
    from tokenjoule.kernels.spec import ConfigError

    monkeypatch.setenv("TOKENJOULE_DEBUG", "1")
    with pytest.raises(ConfigError, match="gpt-5"):
        main(["models", "show", "gpt-5"])


@pytest.mark.parametrize("exc", [ZeroDivisionError("a bug"), KeyError("a bug"), ValueError("a bug, not a user error")])
def test_unexpected_exceptions_keep_their_traceback(monkeypatch, exc):
    from tokenjoule.kernels.spec import ModelSpec

    def broken(cls, name):
        raise exc

    monkeypatch.setattr(ModelSpec, "from_name", classmethod(broken))
    result = runner.invoke(app, ["models", "show", "llama-3.1-8b"])
    assert result.exit_code not in (0, 2) and result.exception is exc
    with pytest.raises(type(exc)):
        main(["models", "show", "llama-3.1-8b"])


def test_a_missing_file_without_its_name_is_a_bug(monkeypatch):
    from tokenjoule.kernels.spec import ModelSpec

    def broken(cls, name):
        raise FileNotFoundError("no file named")  # an OSError that names no file: our bug, not the user's

    monkeypatch.setattr(ModelSpec, "from_name", classmethod(broken))
    with pytest.raises(FileNotFoundError):
        main(["models", "show", "llama-3.1-8b"])
