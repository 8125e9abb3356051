"""``neuralcleanse demo``: plant a backdoor in a small classifier, find it and remove it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neuralcleanse.core.config import MAX_SEED
from neuralcleanse.frontends.cli.folders import SCAN_OUTPUTS, prepare_folder, remove_if_empty
from neuralcleanse.frontends.cli.messages import make_console


def demo(
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder for the demo's report.")] = Path("neuralcleanse-demo"),
    seed: Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED,
                                      help="Seed of everything random.")] = 0,
) -> None:
    """Plant a backdoor in a small digits classifier, find it, remove it, write the report.

    Uses scikit-learn's bundled 8x8 digits (no download); takes about a minute on 2 CPU cores.
    """
    from neuralcleanse.frontends.demo import run_demo

    created = prepare_folder(out, "--out", SCAN_OUTPUTS)
    try:
        run_demo(out, seed=seed, console=make_console())
    except BaseException:
        remove_if_empty(created)
        raise
