"""Output folders: made and probed before any work, and removed again when a run fails.

A command checks that it can write where its output goes before it loads a model, so that a
typo in ``--out`` costs a second, not a scan.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from neuralcleanse.frontends.cli.messages import CliError, qpath

#: The sub-folder of a scan's ``--out`` where finished labels wait for ``--resume``.
PARTIAL_DIR = "partial"
#: What a command writes into its output folder: files, and folders (ending with "/").
SCAN_OUTPUTS = ("report.json", "report.html", "triggers/", f"{PARTIAL_DIR}/")
MITIGATE_OUTPUTS = ("report.json", "report.html", "mitigation.json", "triggers/")


def prepare_folder(folder: Path, flag: str, outputs: tuple[str, ...] = ()) -> list[Path]:
    """Make ``folder`` (creating it if needed) and check that it can be written, up front.

    ``outputs`` names what the command will write there; an existing entry of the wrong kind
    (a folder where a file goes, or the reverse) is refused now rather than after the work.

    Returns:
        The folders created, outermost first (see :func:`remove_if_empty`).

    Raises:
        CliError: When the folder cannot be made or written; the message names ``flag``.
    """
    where = f"{flag} {qpath(folder)}"
    if folder.exists() and not folder.is_dir():
        raise CliError(f"{where} is a file, not a folder")
    missing: list[Path] = []
    probe = folder
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the folder {where}: "
                       f"{exc.strerror or type(exc).__name__}") from None
    created = missing[::-1]
    try:
        test = folder / f".neuralcleanse-write-test-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(test, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        test.unlink()
    except OSError as exc:
        remove_if_empty(created)
        raise CliError(f"cannot write into the folder {where}: "
                       f"{exc.strerror or type(exc).__name__}") from None
    for name in outputs:
        entry = folder / name.rstrip("/")
        if name.endswith("/") and entry.exists() and not entry.is_dir():
            raise CliError(f"{entry} is a file, but the output goes into a folder of that "
                           f"name: move it away or choose another {flag}")
        if not name.endswith("/") and entry.is_dir():
            raise CliError(f"{entry} is a folder, but the output is a file of that name: "
                           f"move it away or choose another {flag}")
    return created


def remove_if_empty(created: list[Path]) -> None:
    """Remove folders that :func:`prepare_folder` created, innermost first, if still empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are the same existing file (through links too)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
