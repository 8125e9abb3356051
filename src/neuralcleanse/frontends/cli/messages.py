"""What the command line prints: exit codes, its error type, sanitised lines, flag wording.

The library's messages name Python parameters (``arch=``, ``trust_pickle=True``, ...);
:func:`to_flags` rewrites those spellings into the flags that set them, with one table
(:data:`FLAG_SPELLINGS`), so that a command-line user is told about ``--arch`` and not about a
keyword argument.
"""

from __future__ import annotations

import re
import sys
import unicodedata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from neuralcleanse.core.errors import InputError

EXIT_CLEAN, EXIT_FLAGGED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class CliError(InputError):
    """A usage or input error found by the command line; one line, exit code 2."""


class Interrupted(Exception):
    """The scan was interrupted after writing a partial report (exit code 130)."""


#: Library spellings of parameters (``name=`` and, for booleans, ``name=True/False``) and the
#: flags that set them. Longer spellings come first, so ``channels_first=True`` wins over
#: ``channels_first=``.
FLAG_SPELLINGS: tuple[tuple[str, str], ...] = (
    ("trust_pickle=True", "--trust-pickle"),
    ("trust_pickle=", "--trust-pickle"),
    ("channels_first=True", "--channels-first"),
    ("channels_first=False", "--channels-last"),
    ("channels_first=", "--channels-first/--channels-last"),
    ("arch_kwargs=", "--arch-kwargs"),
    ("arch=", "--arch"),
    ("x_key=", "--x-key"),
    ("y_key=", "--y-key"),
    ("input_shape=", "--input-shape"),
    ("image_size=", "--input-shape"),  # load_data's parameter, set from --input-shape
    ("ignore_sha256=True", "--ignore-sha256"),  # load_filter's
    ("clip_values=", "--clip-values"),
    ("output=", "--output"),
    ("preprocessing=", "--subtract/--divide"),  # the (subtrahend, divisor) pair they build
    ("target_fpr=", "--target-fpr"),  # filter_inputs's
    ("fpr_confidence=", "--fpr-confidence"),
)
#: A spelling starts a word: ``max_key=``, a path such as ``/tmp/arch=1.pt`` and a quoted value
#: of the user's (``'x_key=1'``) are left alone.
_SPELLING = re.compile(r"(?<![\w./\\='\"-])(" + "|".join(
    re.escape(s) + (r"(?![\w])" if not s.endswith("=") else "") for s, _ in FLAG_SPELLINGS)
    + ")")
_FLAGS = dict(FLAG_SPELLINGS)
#: A shape such as ``input_shape=(1, 28, 28)`` is written the way the flag takes it:
#: ``--input-shape 1,28,28``.
_TUPLE = re.compile(r"\(\s*(\d+(?:\s*,\s*\d+)*)\s*,?\s*\)")


def to_flags(text: str) -> str:
    """``text`` with the library's parameter spellings replaced by the flags that set them.

    ``name=value`` becomes ``--flag value``, a bare ``name=`` becomes ``--flag``, and boolean
    spellings become the flag that sets that value (``channels_first=False`` ->
    ``--channels-last``).
    """
    out: list[str] = []
    pos = 0
    for match in _SPELLING.finditer(text):
        spelling = match.group(1)
        flag = _FLAGS[spelling]
        out.append(text[pos:match.start()])
        pos = match.end()
        rest = text[pos:]
        if spelling.endswith("=") and rest and not rest[0].isspace() and rest[0] not in ",;)":
            if flag == "--input-shape" and (shape := _TUPLE.match(rest)):
                out.append(f"{flag} {''.join(shape.group(1).split())}")
                pos += shape.end()
                continue
            out.append(f"{flag} ")
        else:
            out.append(flag)
    out.append(text[pos:])
    return "".join(out)


def quote(text: Any, limit: int = 60) -> str:
    """``repr`` of a user's value, shortened, for an error message (never raises)."""
    try:
        shown = repr(text)
    except ValueError:  # an int too long to print
        shown = f"a {type(text).__name__}"
    return shown if len(shown) <= limit else shown[:limit - 4] + "...'"


def qpath(path: Any) -> str:
    """A path quoted for a message, in full (the caller's :func:`printable` escapes it)."""
    return repr(str(path))


def printable(text: Any) -> str:
    r"""``text`` on one line with every control or format character shown as an escape.

    Runs of whitespace (newlines included) become one space; what remains of Unicode's
    categories C* (e.g. ESC of a terminal escape sequence, bidirectional overrides, lone
    surrogates from undecodable file names) is written as an escape such as ``\x1b``.
    """
    out = []
    for ch in " ".join(str(text).split()):
        if unicodedata.category(ch)[0] == "C":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


#: Width of a console that does not write to a terminal (a pipe, a CI log): wide enough that
#: rich never breaks a line, so that a path or a printed command stays on one line.
UNWRAPPED_WIDTH = 10_000


def make_console(*, stderr: bool = False, quiet: bool = False) -> Console:
    """The console a command prints its lines on.

    In a terminal lines are folded at its width as usual; anywhere else (``| tee``, CI logs,
    captured output) nothing is wrapped at 80 columns. ``quiet`` prints nothing at all.
    """
    console = Console(stderr=stderr, quiet=quiet, soft_wrap=True)
    if not console.is_terminal:
        console.width = UNWRAPPED_WIDTH
    return console


def say(console: Console, text: str, style: str | None = None) -> None:
    """Print a line that may hold the user's paths: no markup, no control characters."""
    console.print(printable(text), style=style, markup=False, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    """Print ``neuralcleanse: error: MESSAGE`` as one sanitised line on stderr."""
    sys.stderr.write(f"neuralcleanse: error: {printable(message)}\n")
    sys.stderr.flush()


def error_text(exc: InputError | OSError) -> str:
    """The line printed for an input error: the message in flag wording, or the OS's reason."""
    if isinstance(exc, OSError):
        text = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
        return text or type(exc).__name__
    return to_flags(str(exc)) or type(exc).__name__


@contextmanager
def short_warnings() -> Iterator[None]:
    """Show Python warnings as single sanitised lines on stderr, in flag wording."""
    package = str(Path(__file__).resolve().parents[2])  # the neuralcleanse package

    def show(message: Warning | str, category: type[Warning], filename: str, *_: Any,
             **__: Any) -> None:
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning,
                                 FutureWarning)) and not filename.startswith(package):
            return  # notices about the frameworks' own APIs are not the user's concern
        sys.stderr.write(f"neuralcleanse: warning: {printable(to_flags(str(message)))}\n")

    previous = warnings.showwarning
    warnings.showwarning = show  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.showwarning = previous  # type: ignore[assignment]
