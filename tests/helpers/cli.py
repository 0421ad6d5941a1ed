"""Running the CLI in-process as a user would, and what a user mistake must look like."""

from __future__ import annotations

from click.testing import CliRunner

from tensorfold.cli import main


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output  # click >= 8.2: stdout and stderr interleaved


def assert_user_error(code, out, expected: str):
    assert code == 2, out
    assert "Traceback" not in out
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert expected in lines[0], out
