"""A bug in nixlayer is told apart from bad input: exit 1, one line asking for a report,
and the traceback only with --debug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BROKEN_RUN = """
import sys
import nixlayer.strategies as strategies

def broken(graph, roots, budget):
    raise RuntimeError("boom")

strategies.STRATEGIES["cochange"] = broken
sys.argv = ["nixlayer", *sys.argv[1:]]
from nixlayer.cli import main
main()
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", BROKEN_RUN, *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)


def test_an_internal_error_asks_for_a_report() -> None:
    result = _run("plan", "fixtures/store-closure.json", "-q")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "nixlayer: error: internal error (RuntimeError: boom); please report it with the "
        "output of the same command run with `nixlayer --debug …`"
    ]


def test_debug_shows_the_traceback() -> None:
    result = _run("--debug", "plan", "fixtures/store-closure.json", "-q")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: boom" in result.stderr
