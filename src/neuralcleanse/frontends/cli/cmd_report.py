"""``neuralcleanse report``: render report.html and the trigger images again from report.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neuralcleanse.core.results import ScanResult
from neuralcleanse.frontends.cli.folders import prepare_folder
from neuralcleanse.frontends.cli.messages import CliError, printable, qpath


def report(
    path: Annotated[Path, typer.Argument(
        help="A report folder (with report.json) or a report.json file.", show_default=False)],
) -> None:
    """Render report.html and the trigger images again from report.json."""
    from neuralcleanse.io.report import REPORT_JSON, render_directory

    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise CliError(f"{qpath(path)} does not exist")
    if path.is_file() and path.name != REPORT_JSON:
        raise CliError(f"give a report folder or its {REPORT_JSON} (got {qpath(path.name)})")
    if (folder / REPORT_JSON).is_file():  # a bad report is refused before anything is written
        ScanResult.from_json(folder / REPORT_JSON)
    prepare_folder(folder, "the report folder", ("report.html", "triggers/"))
    paths = render_directory(folder)
    typer.echo(printable(f"report: {paths.html}"))
