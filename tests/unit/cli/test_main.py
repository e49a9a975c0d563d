"""The `risloc` command: its commands by the names docs/guide.md gives them, --version,
-v (debug logging) and each command's help."""

import logging

from typer.testing import CliRunner

from risloc import __version__
from risloc.cli.main import app

COMMANDS = ("demo", "simulate", "info", "localize", "evaluate", "train", "plot-run",
            "fit-order", "export-model", "tune")


def test_every_documented_command_is_there_with_its_help():
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    for name in COMMANDS:
        res = CliRunner().invoke(app, [name, "--help"])
        assert res.exit_code == 0, (name, res.output)


def test_version_and_verbose(request):
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"risloc {__version__}"
    root = logging.getLogger()
    saved = root.level, root.handlers[:]

    def restore():
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]

    request.addfinalizer(restore)
    for args, level in ((["-v"], logging.DEBUG), (["--verbose"], logging.DEBUG),
                        ([], logging.INFO)):
        CliRunner().invoke(app, [*args, "plot-run", "no-such-run"])
        assert root.level == level, args


def test_a_command_s_help_keeps_each_paragraph_of_its_docstring_on_one_line():
    """Rich's help keeps the source's line breaks: they broke sentences mid-line."""
    from risloc.cli.main import _help
    from risloc.cli.plot_run import plot_run_command

    text = _help(plot_run_command)
    assert "\n" not in text and text.startswith("Draw a run's training curves: loss per")


def test_each_command_s_help_is_its_docstring_a_paragraph_a_line():
    from risloc.cli.main import _help

    commands = {c.name: c for c in app.registered_commands}
    assert sorted(commands) == sorted(COMMANDS)
    for name, info in commands.items():
        assert info.help == _help(info.callback) and info.help, name
        assert "\n" not in info.help.replace("\n\n", ""), name

    def two_paragraphs():
        """First line
        goes on.

        Second
        paragraph."""

    assert _help(two_paragraphs) == "First line goes on.\n\nSecond paragraph."


def test_risloc_without_arguments_shows_the_help_listing_the_commands():
    """(a mutation review: `no_args_is_help=False` passed; bare `risloc` said only
    'Missing command')"""
    res = CliRunner().invoke(app, [])
    assert "Missing command" not in res.output, res.output
    for name in COMMANDS:
        assert name in res.output, (name, res.output)
