"""Ctrl-C in any subcommand is one line and exit code 130, never a traceback."""

from __future__ import annotations

import argparse

import pytest

from cellgym.agents import cli


def test_keyboard_interrupt_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    parser = cli.build_parser()
    real_parse = parser.parse_args

    def parse(argv: list[str] | None = None) -> argparse.Namespace:
        args = real_parse(argv)
        args.run = interrupted
        return args

    monkeypatch.setattr(parser, "parse_args", parse)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main(["leaderboard", "--quick"]) == 130
    err = capsys.readouterr().err
    assert err == "cellgym leaderboard: interrupted.\n"
