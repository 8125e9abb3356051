"""``neuralcleanse scan-many``: scan every model of a manifest (or of a folder), exit 0/1/2/130.

Each model gets the graded verdict ``neuralcleanse scan`` gives it (backdoor, suspicious or
clean; ``--verdict``); ``--fail-on`` chooses which verdicts of any model exit 1
(:data:`~neuralcleanse.frontends.cli.cmd_scan.FAILING_VERDICTS`, as for ``scan``).

The work is :func:`neuralcleanse.frontends.api.scan_many` (on Ray, or one model after another
with ``--sequential``); this module turns flags into its arguments, shows a live progress
display on a terminal, and prints the one-line summary and where ``index.html`` is. With
``--sarif FILE`` it also writes one SARIF 2.1.0 log of every model
(:func:`neuralcleanse.io.sarif.sarif_many_log`), built from the summary and the models' reports
once the run completes.

The search flags are ``scan``'s own: their definitions are read from
:func:`~neuralcleanse.frontends.cli.cmd_scan.scan`'s signature (:data:`SEARCH_FLAGS`), and the
settings are built the way ``scan`` builds them (:func:`options.build_config`).
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from neuralcleanse.core.summary import ScanManySummary
from neuralcleanse.distributed.tasks import STATE_DIR
from neuralcleanse.frontends.cli.cmd_scan import FAILING_VERDICTS, check_sarif_target, scan
from neuralcleanse.frontends.cli.folders import prepare_folder, remove_if_empty
from neuralcleanse.frontends.cli.inputs import clip_range, preprocessing_values
from neuralcleanse.frontends.cli.messages import (
    EXIT_CLEAN,
    EXIT_FLAGGED,
    EXIT_USAGE,
    CliError,
    Interrupted,
    make_console,
    printable,
    qpath,
    say,
)
from neuralcleanse.frontends.cli.options import (
    DATA_PANEL,
    OUT_PANEL,
    UNSET,
    ArchKwargsOpt,
    ArchOpt,
    ChannelsOpt,
    ClipOpt,
    DataLayout,
    DeviceOpt,
    DivideOpt,
    FailOn,
    InputShapeOpt,
    LayoutOpt,
    MaxSamplesOpt,
    OutputKind,
    OutputOpt,
    Preset,
    SubtractOpt,
    TrustPickleOpt,
    XKeyOpt,
    YKeyOpt,
    build_config,
    parse_auto_int,
    parse_int_list,
    parse_json,
    parse_shape,
    read_config_file,
)
from neuralcleanse.io.summary_files import INDEX_HTML, SUMMARY_CSV, SUMMARY_JSON

DEFAULT_OUT = "neuralcleanse-scan-many"
#: What scan-many writes into ``--out``: the summary files and one report folder per model.
SCAN_MANY_OUTPUTS = (SUMMARY_JSON, SUMMARY_CSV, INDEX_HTML, "models/")
#: Everything the run owns in ``--out`` (its outputs and its state for ``--resume``):
#: ``--sarif`` may not point there.
RUN_ENTRIES = (*SCAN_MANY_OUTPUTS, f"{STATE_DIR}/")
#: ``scan``'s flags that ``scan-many`` takes as they are (the search settings, and ``--labels``
#: as a default for the models of a folder).
SEARCH_FLAGS = ("config", "preset", "steps", "mini_batches", "batch_size", "learning_rate",
                "init_cost", "norm", "attack_success_threshold", "patience", "cost_multiplier",
                "early_stop", "early_stop_threshold", "early_stop_patience",
                "anomaly_threshold", "verdict", "confirm_seeds", "confirm_margin",
                "max_norm_ratio", "small_norm_ratio", "precision", "seed", "label_batch",
                "memory_budget_mb", "labels")
MANIFEST_SUFFIXES = (".toml", ".json")
MAX_RETRIES = 100
RUN_PANEL = "Where and how the models run"

ManifestArg = Annotated[Path, typer.Argument(
    metavar="MANIFEST",
    help="A TOML or JSON manifest (a defaults table, a search table and one models entry per "
         "model: name, model, data, arch, ...; see the README), or a folder of model files "
         "scanned on the one --data file (the model flags apply to each).", show_default=False)]


def scan_many(
    ctx: typer.Context,
    manifest: ManifestArg,
    out: Annotated[Path, typer.Option(
        "--out", "-o", rich_help_panel=OUT_PANEL,
        help="Folder for summary.json, summary.csv, index.html and one report folder per "
             "model (models/NAME/); created if needed and checked before any work. Those names "
             "are replaced; nothing else in the folder is touched.")] = Path(DEFAULT_OUT),
    data: Annotated[Path | None, typer.Option(
        "--data", "-d", rich_help_panel=DATA_PANEL, show_default=False,
        help="Clean labelled images for every model of a MANIFEST folder (.npz or a folder "
             "with one sub-folder per class). A manifest file names its own data.")] = None,
    address: Annotated[str | None, typer.Option(
        "--address", metavar="ray://HOST:PORT|auto", rich_help_panel=RUN_PANEL,
        help="Ray cluster to run on: ray://HOST:10001 (Ray client), HOST:PORT, or auto (the "
             "cluster this machine belongs to). Default: a Ray started on this machine.")
    ] = None,
    cpus_per_scan: Annotated[float, typer.Option(
        "--cpus-per-scan", rich_help_panel=RUN_PANEL,
        help="CPUs each task reserves (> 0; fractions share a CPU).")] = 1.0,
    gpus_per_scan: Annotated[float, typer.Option(
        "--gpus-per-scan", rich_help_panel=RUN_PANEL,
        help="GPUs each task reserves (>= 0; 0.25 puts four tasks on one GPU).")] = 0.0,
    labels_per_task: Annotated[int | None, typer.Option(
        "--labels-per-task", min=1, rich_help_panel=RUN_PANEL,
        help="Split each model's labels into tasks of this many labels, run in parallel and "
             "merged into the result one scan gives. Default: one task per model.")] = None,
    max_retries: Annotated[int, typer.Option(
        "--max-retries", min=0, max=MAX_RETRIES, rich_help_panel=RUN_PANEL,
        help="Times a task whose worker died is run again before its model is marked "
             "failed.")] = 3,
    resume: Annotated[bool, typer.Option(
        "--resume", rich_help_panel=RUN_PANEL,
        help="Keep the models (and label chunks) an earlier run into --out finished with the "
             "same settings; scan only the rest.")] = False,
    sequential: Annotated[bool, typer.Option(
        "--sequential", rich_help_panel=RUN_PANEL,
        help="No Ray: scan the models one after another in this process.")] = False,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", rich_help_panel=OUT_PANEL, show_default=False,
        help="Live display of models done, running and failed, and the ETA (default: on in "
             "a terminal).")] = None,
    fail_on: Annotated[FailOn, typer.Option(
        "--fail-on", rich_help_panel=OUT_PANEL, case_sensitive=False,
        help="Which verdict of any model exits 1: backdoor (a model with a BACKDOOR "
             "verdict), suspicious (a BACKDOOR or a SUSPICIOUS verdict: the strict gate) or "
             "never (no verdict exits 1). A model that could not be scanned still exits "
             "2, an interruption 130.")] = FailOn.backdoor,
    sarif: Annotated[Path | None, typer.Option(
        "--sarif", metavar="FILE", rich_help_panel=OUT_PANEL,
        help="Also write one SARIF 2.1.0 log of the whole run to FILE for code-scanning "
             "dashboards: a result per backdoor label (level error) and per suspicious label "
             "(level warning) of every model, located at that model's file (with its "
             "SHA-256); a model that could not be scanned is an execution notification. "
             "Written when the run completes (with --resume: every model of the summary); "
             "FILE may lie in --out but not on the run's own files.")] = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    input_shape: InputShapeOpt = None,
    channels_first: ChannelsOpt = None,
    clip_values: ClipOpt = None,
    subtract: SubtractOpt = None,
    divide: DivideOpt = None,
    output: OutputOpt = OutputKind.auto,
    device: DeviceOpt = None,
    x_key: XKeyOpt = None,
    y_key: YKeyOpt = None,
    max_samples: MaxSamplesOpt = None,
    data_layout: LayoutOpt = DataLayout.auto,
    **search: Any,
) -> None:
    """Scan many models for backdoors (on Ray, or one after another); write their summary.

    MANIFEST is a TOML/JSON manifest, or a folder of model files with --data (model flags such
    as --arch apply to each). Each model's report goes to OUT/models/NAME/; OUT/index.html,
    summary.json and summary.csv list them all. Each model gets scan's verdict: BACKDOOR (a
    label's trigger is an outlier, confirmed), SUSPICIOUS (a label crossed the threshold in a
    single run but not on the median of its runs) or CLEAN; --verdict paper gives the
    published one-run rule (BACKDOOR or CLEAN). --sarif FILE also writes one SARIF log of
    every model's flagged and suspicious labels, for code scanning (see docs/ci.md).

    Exit codes: 1 when a model's verdict is BACKDOOR (--fail-on backdoor, the default), or
    BACKDOOR or SUSPICIOUS (--fail-on suspicious); no verdict exits 1 with --fail-on never.
    Otherwise 2 when a model could not be scanned (also on bad input, before any work), else
    0. 3 on an internal error, 130 when interrupted (the summary is written; --resume
    continues).
    """
    check_resources(cpus_per_scan, gpus_per_scan)
    if sequential and address is not None:
        raise CliError("--sequential runs without Ray, so it takes no --address; drop one")
    given = model_defaults(
        arch=arch, arch_kwargs=arch_kwargs, trust_pickle=trust_pickle, input_shape=input_shape,
        channels_first=channels_first, clip_values=clip_values, subtract=subtract,
        divide=divide, output=output, device=device, x_key=x_key, y_key=y_key,
        max_samples=max_samples, data_layout=data_layout, labels=search.pop("labels", None))
    source = manifest_source(manifest, data, given)
    config = search_config(search, preset_given=_given(ctx, "preset"))
    show = sys.stdout.isatty() if progress is None else progress

    if sarif is not None:
        check_sarif_target(sarif, out, RUN_ENTRIES)
    console = make_console()
    created = prepare_folder(out, "--out", SCAN_MANY_OUTPUTS)  # before any work
    from neuralcleanse.frontends import api

    started = time.time()
    try:
        with ProgressDisplay(console, enabled=show) as display:
            summary = api.scan_many(
                source, out, config=config, address=address, cpus_per_scan=cpus_per_scan,
                gpus_per_scan=gpus_per_scan, labels_per_task=labels_per_task,
                max_retries=max_retries, resume=resume,
                parallel=False if sequential else None, on_progress=display)
    except KeyboardInterrupt:
        index = out / INDEX_HTML
        written = index.is_file() and index.stat().st_mtime >= started - 1
        where = f"; summary of the models finished so far in {index}" if written else ""
        raise Interrupted(f"interrupted{where}; rerun with --resume to continue") from None
    except BaseException:
        remove_if_empty(created)  # only folders this run made, and only while still empty
        raise
    code = finish(console, summary, out, fail_on)
    if sarif is not None:
        write_run_sarif(sarif, summary, out, manifest, code, fail_on)
        say(console, f"SARIF: {sarif}")
    raise typer.Exit(code)


def finish(console: Console, summary: ScanManySummary, out: Path,
           fail_on: FailOn = FailOn.backdoor) -> int:
    """Print the run's summary line, failed models and index path; return the exit code.

    The code is 1 when a model's verdict is one that ``fail_on`` fails, else 2 when a model
    could not be scanned, else 0.

    Raises:
        Interrupted: When the run was interrupted (exit code 130).
    """
    for m in summary.failed[:10]:
        say(console, f"failed: {m.name}: {m.error or 'no error message'}", style="yellow")
    if len(summary.failed) > 10:
        say(console, f"... and {len(summary.failed) - 10} more failed model(s): see "
                     f"{out / SUMMARY_CSV}", style="yellow")
    style = ("bold red" if summary.flagged else "bold yellow" if summary.suspicious
             else "yellow" if summary.failed else "bold green")
    say(console, summary.summary(), style=style)
    index = out / INDEX_HTML
    say(console, f"summary: {index}  (JSON: {out / SUMMARY_JSON}, CSV: {out / SUMMARY_CSV})")
    if summary.interrupted:
        raise Interrupted(f"interrupted: {len(summary.models)} model(s) in the summary "
                          f"{index}; rerun with --resume to continue")
    if any(m.verdict in FAILING_VERDICTS[fail_on] for m in summary.models):
        return EXIT_FLAGGED
    return EXIT_USAGE if summary.failed else EXIT_CLEAN


def write_run_sarif(path: Path, summary: ScanManySummary, out: Path, manifest: Path,
                    code: int, fail_on: FailOn) -> None:
    """Write the SARIF log of the run: every model of ``summary``, with the run's exit code."""
    from neuralcleanse.io.sarif import summary_models, write_sarif_many

    base = Path.cwd() if manifest.is_dir() else manifest.expanduser().resolve().parent
    write_sarif_many(path, summary_models(summary, out, base), exit_code=code, properties={
        "fail_on": fail_on.value, "totals": summary.totals(),
        "flagged_models": [m.name for m in summary.flagged],
        "suspicious_models": [m.name for m in summary.suspicious],
        "failed_models": [m.name for m in summary.failed],
        "summary": str(out / SUMMARY_JSON)})


# -- flags to arguments ------------------------------------------------------------------------
def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the flag of parameter ``name`` was given on the line (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def check_resources(cpus: float, gpus: float) -> None:
    """``--cpus-per-scan`` must be finite and > 0, ``--gpus-per-scan`` finite and >= 0."""
    if not math.isfinite(cpus) or cpus <= 0:
        raise CliError(f"--cpus-per-scan must be a number > 0, e.g. 1 or 0.5 (got {cpus:g})")
    if not math.isfinite(gpus) or gpus < 0:
        raise CliError(f"--gpus-per-scan must be a number >= 0, e.g. 0.25 (got {gpus:g})")


def model_defaults(*, arch: str | None, arch_kwargs: str | None, trust_pickle: bool,
                   input_shape: str | None, channels_first: bool | None,
                   clip_values: str | None, subtract: str | None, divide: str | None,
                   output: OutputKind, device: str | None, x_key: str | None,
                   y_key: str | None, max_samples: int | None, data_layout: DataLayout,
                   labels: str | None) -> dict[str, Any]:
    """The model and data flags given on the line, as manifest ``[defaults]`` values.

    Each value is checked here, so that a bad flag is refused before any model is looked at.
    """
    out: dict[str, Any] = {}
    if arch is not None:
        out["arch"] = arch
    if arch_kwargs is not None:
        kwargs = parse_json(arch_kwargs, "--arch-kwargs")
        if not isinstance(kwargs, dict):
            raise CliError("--arch-kwargs must be a JSON object, e.g. '{\"nb_classes\": 43}'")
        out["arch_kwargs"] = kwargs
    if trust_pickle:
        out["trust_pickle"] = True
    shape = parse_shape(input_shape)
    if shape is not None:
        out["input_shape"] = list(shape)
    if channels_first is not None:
        out["channels_first"] = channels_first
    clip = clip_range(clip_values, None)
    if clip is not None:
        out["clip_values"] = [float(clip[0]), float(clip[1])]
    if subtract is not None or divide is not None:
        sub, div = preprocessing_values(subtract, divide)
        out["subtract"] = sub[0] if len(sub) == 1 else sub
        out["divide"] = div[0] if len(div) == 1 else div
    if output is not OutputKind.auto:
        out["output"] = output.value
    if data_layout is not DataLayout.auto:
        out["data_layout"] = data_layout.value
    for key, value in (("device", device), ("x_key", x_key), ("y_key", y_key),
                       ("max_samples", max_samples)):
        if value is not None:
            out[key] = value
    if labels is not None:
        out["labels"] = parse_int_list(labels, "--labels")
    return out


def manifest_source(manifest: Path, data: Path | None, defaults: dict[str, Any]) -> Any:
    """What ``scan_many`` is given: the manifest file, or the folder with its data and defaults.

    Raises:
        CliError: When MANIFEST does not exist or is neither a folder nor a .toml/.json file,
            when a folder comes without ``--data``, or a manifest file with ``--data`` or
            model flags (a manifest says those itself).
    """
    if not manifest.exists():
        raise CliError(f"manifest {qpath(manifest)} does not exist")
    if manifest.is_dir():
        if data is None:
            raise CliError(f"{qpath(manifest)} is a folder of models: give the clean data "
                           "they are scanned on with --data FILE")
        if not data.exists():
            raise CliError(f"data path {qpath(data)} does not exist")
        return (manifest, data, defaults)
    if manifest.suffix.lower() not in MANIFEST_SUFFIXES:
        raise CliError(f"MANIFEST takes a .toml or .json file, or a folder of models (got "
                       f"{qpath(manifest)})")
    if data is not None:
        raise CliError(f"--data is for a folder of models; the manifest {qpath(manifest.name)} "
                       "names each model's data (data = ... in [defaults] or in [[models]])")
    if defaults:
        flags = ", ".join("--" + k.replace("_", "-") for k in defaults)
        raise CliError(f"{flags}: model flags are for a folder of models; write them in the "
                       f"manifest {qpath(manifest.name)} ([defaults] or [[models]])")
    return manifest


def search_config(search: dict[str, Any], preset_given: bool) -> dict[str, Any] | None:
    """The search settings given on the line (``--preset``, ``--config``, flags) as a dict.

    They are checked now, the way ``scan`` checks them (a refusal names the flag or the file),
    and are laid over the manifest's ``[search]`` table by ``scan_many``: a setting not given
    here keeps the manifest's value. ``None`` when nothing was given.
    """
    preset: Preset = search.pop("preset")
    config_file: Path | None = search.pop("config")
    flags = {k: (UNSET if v is None else v.value if isinstance(v, Enum) else v)
             for k, v in search.items() if k not in ("mini_batches", "label_batch")}
    flags["mini_batches"] = parse_auto_int(search.get("mini_batches"), "--mini-batches", "all")
    flags["label_batch"] = parse_auto_int(search.get("label_batch"), "--label-batch", "auto")
    build_config(preset, config_file, {**flags, "progress": False})  # checks every value
    settings: dict[str, Any] = {"preset": preset.value} if preset_given else {}
    if config_file is not None:
        settings.update(read_config_file(config_file))
    settings.update({k: v for k, v in flags.items() if not (isinstance(v, str) and v == UNSET)})
    return settings or None


def _signature() -> inspect.Signature:
    """:func:`scan_many`'s own parameters, then ``scan``'s search flags in place of ``**search``.

    The flags keep ``scan``'s definitions (names, help, defaults), so the two commands cannot
    drift apart.
    """
    own = [p for p in inspect.signature(scan_many, eval_str=True).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    theirs = inspect.signature(scan, eval_str=True).parameters
    borrowed = [theirs[name].replace(kind=inspect.Parameter.KEYWORD_ONLY)
                for name in SEARCH_FLAGS]
    return inspect.Signature([*own, *borrowed], return_annotation=None)


scan_many.__signature__ = _signature()  # type: ignore[attr-defined]


# -- progress --------------------------------------------------------------------------------
def _eta(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressDisplay:
    """A live rich display of the run, fed by ``scan_many``'s ``on_progress`` events.

    Shows a bar of the models done, how many run and how many failed, the ETA and the last
    model named by an event. Does nothing when disabled (not a terminal, or ``--no-progress``).
    """

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self.state: dict[str, Any] = {"done": 0, "total": None, "running": 0, "failed": 0,
                                      "eta": "–", "model": None, "status": None,
                                      "labels_done": None, "labels_total": None,
                                      "confirm_labels": None}
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn

            self._progress = Progress(BarColumn(), TextColumn("{task.description}",
                                                              markup=False),
                                      console=self.console, transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.text(), total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def text(self) -> str:
        """The line beside the bar, e.g. ``3/8 models · 2 running · 1 failed · ETA 1:05``.

        The model of the latest event follows, with its state and labels when known
        (``· resnet: scanning 4/10 labels``, ``· resnet: confirming 2 label(s)``).
        """
        s = self.state
        total = "?" if s["total"] is None else s["total"]
        line = (f"{s['done']}/{total} models · {s['running']} running · {s['failed']} failed "
                f"· ETA {s['eta']}")
        if s["model"]:
            line += f" · {printable(s['model'])[:40]}"
            if s["status"]:
                line += f": {printable(s['status'])[:20]}"
                if s["status"] == "confirming" and s["confirm_labels"]:
                    line += f" {s['confirm_labels']} label(s)"
                elif s["labels_total"] and s["status"] not in ("done", "failed"):
                    line += f" {s['labels_done'] or 0}/{s['labels_total']} labels"
        return line

    def __call__(self, event: dict[str, Any]) -> None:
        """Take one event; fields that are missing or not of the expected type are ignored."""
        if not isinstance(event, dict):
            return
        for key in ("done", "total", "running", "failed"):
            value = event.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self.state[key] = value
        if "eta_seconds" in event:
            self.state["eta"] = _eta(event["eta_seconds"])
        if isinstance(event.get("model"), str):
            self.state["model"] = event["model"]
            status = event.get("status")
            self.state["status"] = status if isinstance(status, str) else None
            for key in ("labels_done", "labels_total"):
                value = event.get(key)
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
                self.state[key] = value if ok else None
            confirming = event.get("confirm_labels")
            self.state["confirm_labels"] = len(confirming) if isinstance(confirming, list) \
                else None
        if self._progress is not None:
            self._progress.update(self._task, description=self.text(),
                                  completed=self.state["done"], total=self.state["total"])
