"""The ``neuralcleanse`` command line: scan, scan-many, mitigate, filter, report, demo.

``mitigate --method filtering --save FILE`` writes the input filter as a small JSON file and
``filter MODEL --filter FILE --data INPUTS [--out decisions.json]`` applies it: per input,
whether it is refused, its score and the model's prediction for the accepted ones.

The only part of neuralcleanse that knows about flags. One module per job: ``options`` (shared
flags, parsers, settings files), ``inputs`` (model and data flags resolved), ``folders``
(output folders probed up front), ``messages`` (exit codes, printed lines, the library's
parameter spellings in flag wording) and one ``cmd_*`` module per command. The resume store is
:class:`neuralcleanse.io.resume.PartialStore`.

Exit codes (the same for every command):

* ``0``: success; for ``scan``, a verdict that does not fail under ``--fail-on``: CLEAN, or
  SUSPICIOUS with ``--fail-on backdoor`` (the default), or any verdict with ``--fail-on never``.
* ``1``: ``scan``'s verdict is BACKDOOR (a label flagged as a backdoor target, confirmed), or
  SUSPICIOUS (a label crossed the threshold in a single run only) with ``--fail-on
  suspicious``; ``scan-many``: a model was flagged (it exits ``2`` when nothing was flagged but
  a model could not be scanned).
* ``2``: usage or input error (unknown flag, bad value, missing or unreadable model or data):
  an ``InputError`` (``LoadError`` and the CLI's own ``CliError`` included), a usage error of
  the command line parser, or an ``OSError``.
* ``3``: anything else, an unexpected internal error (``--debug`` shows the traceback).
* ``130``: interrupted (Ctrl-C); ``scan`` leaves a partial report and ``--resume`` continues it.

Errors are printed as one line on stderr, never as a traceback (unless ``--debug``).
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from neuralcleanse import __version__
from neuralcleanse.core.errors import InputError
from neuralcleanse.frontends.cli.cmd_demo import demo
from neuralcleanse.frontends.cli.cmd_filter import filter_command
from neuralcleanse.frontends.cli.cmd_mitigate import mitigate
from neuralcleanse.frontends.cli.cmd_report import report
from neuralcleanse.frontends.cli.cmd_scan import scan
from neuralcleanse.frontends.cli.cmd_scan_many import scan_many
from neuralcleanse.frontends.cli.messages import (
    EXIT_CLEAN,
    EXIT_FLAGGED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
    Interrupted,
    error,
    error_text,
    printable,
    short_warnings,
)
from neuralcleanse.io.resume import PartialStore

try:  # typer >= 0.20 ships its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer depends on click
    from click.exceptions import ClickException

__all__ = ["EXIT_CLEAN", "EXIT_FLAGGED", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_USAGE",
           "CliError", "PartialStore", "__version__", "app", "main", "printable", "run"]

_state: dict[str, Any] = {"debug": False}

app = typer.Typer(
    name="neuralcleanse",
    help="Find and remove backdoors in trained image classifiers (Neural Cleanse).\n\n"
         "Exit codes: 0 success (scan: verdict CLEAN, or SUSPICIOUS unless --fail-on "
         "suspicious), 1 backdoor flagged (scan: verdict BACKDOOR, or SUSPICIOUS with "
         "--fail-on suspicious; scan-many), 2 usage or input error, 3 internal error, 130 "
         "interrupted.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"neuralcleanse {__version__}")
        raise typer.Exit(EXIT_CLEAN)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors."
                                        )] = False,
) -> None:
    """Find and remove backdoors in trained image classifiers (Neural Cleanse)."""
    _state["debug"] = debug


def command_help(command: Callable[..., Any]) -> str:
    """``command``'s docstring with each paragraph on one line, for the terminal to wrap.

    Typer keeps a docstring's single line breaks, so text written to a 100-column margin
    breaks raggedly in a narrower terminal; joined paragraphs wrap at any width.
    """
    paragraphs = inspect.getdoc(command) or ""
    return "\n\n".join(" ".join(line.strip() for line in paragraph.splitlines())
                       for paragraph in paragraphs.split("\n\n"))


for _name, _command in (("scan", scan), ("mitigate", mitigate), ("report", report),
                        ("demo", demo), ("scan-many", scan_many), ("filter", filter_command)):
    app.command(_name, help=command_help(_command))(_command)


def run(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = "--debug" in args or os.environ.get("NEURALCLEANSE_DEBUG") == "1"
    try:
        with short_warnings():
            rv = command.main(args=args, prog_name="neuralcleanse", standalone_mode=False)
    except ClickException as exc:
        if not exc.format_message():  # e.g. no arguments: the help was printed
            return EXIT_USAGE
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see '{ctx.command_path} --help')"
        error(exc.format_message() + hint)
        return EXIT_USAGE
    except Interrupted as exc:
        sys.stderr.write(f"neuralcleanse: {printable(exc)}\n")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        sys.stderr.write("neuralcleanse: interrupted\n")
        return EXIT_INTERRUPTED
    except (InputError, OSError) as exc:
        if _state["debug"]:
            raise
        error(error_text(exc))
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the last resort is one line, not a traceback
        if _state["debug"]:
            raise
        error(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for the "
              "traceback")
        return EXIT_INTERNAL
    if isinstance(rv, int):
        return rv
    return EXIT_CLEAN


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
