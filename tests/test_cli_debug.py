"""``TINYCNN_DEBUG=1`` lets the command line's errors out as tracebacks instead of one line (README,
"Bad input fails early and says why"; the one line itself: test_cli.py::test_errors_are_one_clear_line)."""
import pytest

from tinycnn.cli import main


def test_tinycnn_debug_shows_the_exception_instead_of_one_line(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "missing.npz")
    assert main(["summary", missing]) == 2  # without it: one line and exit status 2
    assert capsys.readouterr().err.startswith("tinycnn summary: error:")
    monkeypatch.setenv("TINYCNN_DEBUG", "1")
    with pytest.raises((ValueError, OSError), match="missing.npz"):
        main(["summary", missing])
