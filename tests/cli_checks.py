"""Checks the CLI tests share: a user mistake ends in one error line and writes nothing."""

from __future__ import annotations

from pathlib import Path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slimstep: error:"), err
    return err[0]


def one_line(capsys, *fragments: str) -> str:
    """The CLI's one error line, holding every fragment."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimstep: error:") and "\n" not in err, err
    for f in fragments:
        assert f in err, err
    return err


def nothing_written(out: Path) -> None:
    """Neither ``out`` nor a temporary file of it (``.out.*``) is left behind."""
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
