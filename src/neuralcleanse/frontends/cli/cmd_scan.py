"""``neuralcleanse scan``: search every label's smallest trigger, write the reports, exit 0/1.

The verdict is BACKDOOR, SUSPICIOUS or CLEAN (``--verdict confirmed``, the default) or BACKDOOR
or CLEAN (``--verdict paper``); ``--fail-on`` says which verdicts exit 1 (:func:`verdict_exit_code`:
``backdoor``, the default, only BACKDOOR; ``suspicious`` also SUSPICIOUS; ``never`` none).

For pipelines: ``--format json`` prints one JSON document on stdout (the report without the
trigger arrays, plus the paths written; it validates against ``neuralcleanse/io/schemas/
report.schema.json``), ``--sarif FILE`` writes a SARIF 2.1.0 log for code-scanning dashboards
(:mod:`neuralcleanse.io.sarif`) and ``--quiet`` prints only warnings and errors.

Finished labels are saved one by one in ``OUT/partial`` (the resume store,
:mod:`neuralcleanse.io.resume`) so that ``--resume`` continues an interrupted scan.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.console import Console

from neuralcleanse.core.config import FAST_PRESET, MAX_SEED, ScanConfig
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.core.strict_json import dumps
from neuralcleanse.frontends.cli.folders import (
    PARTIAL_DIR,
    SCAN_OUTPUTS,
    prepare_folder,
    remove_if_empty,
)
from neuralcleanse.frontends.cli.inputs import Inputs, load_inputs
from neuralcleanse.frontends.cli.messages import (
    EXIT_CLEAN,
    EXIT_FLAGGED,
    CliError,
    Interrupted,
    make_console,
    qpath,
    say,
)
from neuralcleanse.frontends.cli.options import (
    OUT_PANEL,
    SEARCH_PANEL,
    UNSET,
    ArchKwargsOpt,
    ArchOpt,
    ChannelsOpt,
    ClipOpt,
    DataLayout,
    DataOpt,
    DeviceOpt,
    DivideOpt,
    FailOn,
    FailOnOpt,
    FormatOpt,
    InputShapeOpt,
    LayoutOpt,
    MaxSamplesOpt,
    ModelArg,
    OutputFormat,
    OutputKind,
    OutputOpt,
    PrecisionOpt,
    Preset,
    QuietOpt,
    SubtractOpt,
    TrustPickleOpt,
    VerdictRule,
    XKeyOpt,
    YKeyOpt,
    build_config,
    parse_auto_int,
    parse_int_list,
)
from neuralcleanse.io.data_files import fingerprint
from neuralcleanse.io.resume import PartialStore
from neuralcleanse.search.reverse import CHECKPOINT_EVERY_S

if TYPE_CHECKING:  # the report module (jinja2) is imported when a scan writes its report
    from neuralcleanse.io.report import ReportPaths

DEFAULT_OUT = "neuralcleanse-report"
#: Most ``--restarts``.
MAX_RESTARTS = 1000
#: The defaults the help shows are the library's.
_D = ScanConfig()


def scan(
    model: ModelArg,
    data: DataOpt,
    out: Annotated[Path, typer.Option(
        "--out", "-o", rich_help_panel=OUT_PANEL,
        help="Folder for report.json, report.html, the trigger images (triggers/) and the "
             "finished labels of a running scan (partial/); created if needed and checked "
             "before the scan starts. Those names are replaced; nothing else in the folder is "
             "touched.")] = Path(DEFAULT_OUT),
    resume: Annotated[bool, typer.Option(
        "--resume", rich_help_panel=OUT_PANEL,
        help="Continue an interrupted scan from the labels saved in OUT/partial. Without it, "
             "the label files an earlier scan left there are removed (other files stay).")
    ] = False,
    labels: Annotated[str | None, typer.Option(
        "--labels", metavar="LIST", rich_help_panel=OUT_PANEL,
        help="Scan only these labels, e.g. 0,3,5-7 (default: all).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", metavar="FILE", rich_help_panel=SEARCH_PANEL,
        help="JSON or TOML file of search settings (ScanConfig field names); flags given on "
             "the command line win.")] = None,
    preset: Annotated[Preset, typer.Option(
        "--preset", rich_help_panel=SEARCH_PANEL, case_sensitive=False,
        help=f"Defaults to start from: the paper's; 'fast' ({FAST_PRESET['mini_batches']} "
             "mini-batches per step, early-stop patience "
             f"{FAST_PRESET['early_stop_patience']}: 3.5-9.5x fewer images, a quick first pass "
             "whose flags should be confirmed with the paper's settings); or ART's "
             "KerasNeuralCleanse.")
    ] = Preset.paper,
    steps: Annotated[int | None, typer.Option(
        "--steps", rich_help_panel=SEARCH_PANEL,
        help=f"Maximum optimisation steps per label (default {_D.steps}).")] = None,
    mini_batches: Annotated[str | None, typer.Option(
        "--mini-batches", metavar="N|all", rich_help_panel=SEARCH_PANEL,
        help="Mini-batches per step; 'all' = one pass over the data (default "
             f"{_D.mini_batches}).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", rich_help_panel=SEARCH_PANEL,
        help=f"Images per mini-batch (default {_D.batch_size}).")] = None,
    learning_rate: Annotated[float | None, typer.Option(
        "--learning-rate", rich_help_panel=SEARCH_PANEL,
        help=f"Adam learning rate (default {_D.learning_rate:g}).")] = None,
    init_cost: Annotated[float | None, typer.Option(
        "--init-cost", rich_help_panel=SEARCH_PANEL,
        help=f"Norm cost once it is switched on (default {_D.init_cost:g}).")] = None,
    norm: Annotated[str | None, typer.Option(
        "--norm", metavar="1|2|inf", rich_help_panel=SEARCH_PANEL,
        help=f"Norm of the mask that is penalised (default {_D.to_dict()['norm']}).")] = None,
    attack_success_threshold: Annotated[float | None, typer.Option(
        "--attack-success-threshold", rich_help_panel=SEARCH_PANEL,
        help="Attack success rate a trigger must reach (default "
             f"{_D.attack_success_threshold:g}).")] = None,
    patience: Annotated[int | None, typer.Option(
        "--patience", rich_help_panel=SEARCH_PANEL,
        help=f"Steps in a row before the cost changes (default {_D.patience}).")] = None,
    cost_multiplier: Annotated[float | None, typer.Option(
        "--cost-multiplier", rich_help_panel=SEARCH_PANEL,
        help="Cost up: times m; down: divided by m**1.5 (default "
             f"{_D.cost_multiplier:g}).")] = None,
    early_stop: Annotated[bool | None, typer.Option(
        "--early-stop/--no-early-stop", rich_help_panel=SEARCH_PANEL, show_default=False,
        help="Let a label stop before --steps (default "
             f"{'on' if _D.early_stop else 'off'}).")] = None,
    early_stop_threshold: Annotated[float | None, typer.Option(
        "--early-stop-threshold", rich_help_panel=SEARCH_PANEL,
        help="Best norm >= this x previous best counts as no improvement (default "
             f"{_D.early_stop_threshold:g}).")] = None,
    early_stop_patience: Annotated[int | None, typer.Option(
        "--early-stop-patience", rich_help_panel=SEARCH_PANEL,
        help="Steps without improvement before a label stops (default "
             f"{_D.early_stop_patience}).")] = None,
    anomaly_threshold: Annotated[float | None, typer.Option(
        "--anomaly-threshold", rich_help_panel=SEARCH_PANEL,
        help="Flag labels whose anomaly index exceeds this (default "
             f"{_D.anomaly_threshold:g}).")] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", rich_help_panel=SEARCH_PANEL,
        help="Seed of the trigger initialisation, mini-batches and --max-samples "
             f"(default {_D.seed}).")] = None,
    label_batch: Annotated[str | None, typer.Option(
        "--label-batch", metavar="N|auto", rich_help_panel=SEARCH_PANEL,
        help="Labels optimised together; 1 = one label at a time; auto = as many as "
             "--memory-budget-mb allows (default auto).")] = None,
    memory_budget_mb: Annotated[float | None, typer.Option(
        "--memory-budget-mb", rich_help_panel=SEARCH_PANEL,
        help=f"Memory the stacked labels may use (default {_D.memory_budget_mb:g}).")] = None,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", rich_help_panel=SEARCH_PANEL, show_default=False,
        help="Live progress (labels done, active, step, ETA, and each active label's cost and "
             "trigger norm) (default on in a terminal).")] = None,
    verdict: Annotated[VerdictRule | None, typer.Option(
        "--verdict", rich_help_panel=SEARCH_PANEL, case_sensitive=False, show_default=False,
        help="The rule that decides the verdict: confirmed (re-search the borderline labels "
             "with --confirm-seeds further seeds and grade BACKDOOR, SUSPICIOUS or CLEAN on "
             "their median norms) or paper (the published rule: one run, a label is flagged "
             "when its anomaly index exceeds --anomaly-threshold; BACKDOOR or CLEAN) (default "
             f"{_D.verdict}).")] = None,
    confirm_seeds: Annotated[int | None, typer.Option(
        "--confirm-seeds", metavar="N", rich_help_panel=SEARCH_PANEL,
        help="Further seeds (--seed+1, ...) with which each borderline label is searched again "
             f"under --verdict confirmed (default {_D.confirm_seeds}).")] = None,
    confirm_margin: Annotated[float | None, typer.Option(
        "--confirm-margin", rich_help_panel=SEARCH_PANEL,
        help="A label is borderline (searched again) when its anomaly index exceeds "
             "--anomaly-threshold minus this; the smallest trigger always is (default "
             f"{_D.confirm_margin:g}).")] = None,
    max_norm_ratio: Annotated[float | None, typer.Option(
        "--max-norm-ratio", rich_help_panel=SEARCH_PANEL,
        help="Under --verdict confirmed a label is flagged only when its trigger norm is also "
             "at most this share of the median norm, in (0, 1]; 1 switches this off (default "
             f"{_D.max_norm_ratio:g}).")] = None,
    small_norm_ratio: Annotated[float | None, typer.Option(
        "--small-norm-ratio", rich_help_panel=SEARCH_PANEL,
        help="Under --verdict confirmed a label whose trigger norm is at most this share of "
             "the median norm is flagged whatever its anomaly index, in [0, 1]; 0 switches "
             f"this off (default {_D.small_norm_ratio:g}).")] = None,
    precision: PrecisionOpt = None,
    restarts: Annotated[int, typer.Option(
        "--restarts", min=1, max=MAX_RESTARTS, rich_help_panel=SEARCH_PANEL,
        help="Run the search with this many seeds (--seed, --seed+1, ...); norms are medians "
             "and the report says in how many runs each label was flagged.")] = 1,
    checkpoint_every: Annotated[float, typer.Option(
        "--checkpoint-every", metavar="SECONDS", min=0.0, max=86400.0,
        rich_help_panel=OUT_PANEL,
        help="Save the whole search state (every active label mid-search) to OUT/partial this "
             "often and on Ctrl-C, so --resume continues mid-search with the result an "
             "uninterrupted scan gives; 0 = after every step.")] = CHECKPOINT_EVERY_S,
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
    output_format: FormatOpt = OutputFormat.text,
    fail_on: FailOnOpt = FailOn.backdoor,
    quiet: QuietOpt = False,
    sarif: Annotated[Path | None, typer.Option(
        "--sarif", metavar="FILE", rich_help_panel=OUT_PANEL,
        help="Also write a SARIF 2.1.0 log to FILE for code-scanning dashboards: one result per "
             "backdoor label (level error) and per suspicious label (level warning), located "
             "at the model file (with its SHA-256); no results when the scan is clean. Written "
             "when the scan completes.")] = None,
    known_trigger: Annotated[str | None, typer.Option(
        "--known-trigger", metavar="MASK_PNG[,PATTERN_PNG]", rich_help_panel=OUT_PANEL,
        help="A trigger you already know, shown in the report beside the reversed one: a grey "
             "mask image (black = untouched, white = stamped) and optionally a pattern image "
             "(grey or RGB, 0-255 scaled to the model's value range; default white), both of "
             "the model's input size.")] = None,
    known_target: Annotated[int | None, typer.Option(
        "--known-target", metavar="LABEL", rich_help_panel=OUT_PANEL,
        help="The label the --known-trigger leads to: the known trigger is shown beside that "
             "label's reversed trigger (default: beside every flagged label).")] = None,
) -> None:
    """Scan MODEL for backdoors on clean labelled images; write the JSON and HTML reports.

    The verdict is BACKDOOR (a label's trigger is an outlier, confirmed), SUSPICIOUS (a label
    crossed the threshold in a single run but not on the median of its runs) or CLEAN.
    Exit code 1 for a BACKDOOR verdict, and for SUSPICIOUS too with --fail-on suspicious
    (--fail-on never: 0 whatever the verdict); 0 otherwise. 2 on usage or input errors, 3 on an
    internal error, 130 when interrupted (a partial report is written; --resume continues).
    With --format json, stdout carries one JSON document (the report without the trigger
    arrays, plus the paths written) and nothing else; it is printed only when the scan
    completes.
    """
    flags: dict[str, Any] = dict(
        steps=steps, batch_size=batch_size, learning_rate=learning_rate, init_cost=init_cost,
        attack_success_threshold=attack_success_threshold, patience=patience,
        cost_multiplier=cost_multiplier, early_stop=early_stop,
        early_stop_threshold=early_stop_threshold, early_stop_patience=early_stop_patience,
        anomaly_threshold=anomaly_threshold, seed=seed, memory_budget_mb=memory_budget_mb,
        progress=progress, norm=norm, confirm_seeds=confirm_seeds,
        confirm_margin=confirm_margin, max_norm_ratio=max_norm_ratio,
        small_norm_ratio=small_norm_ratio,
        precision=precision.value if precision is not None else None,
        verdict=verdict.value if verdict is not None else None)
    if quiet and progress is None:
        flags["progress"] = False
    flags = {k: (UNSET if v is None else v) for k, v in flags.items()}
    flags["mini_batches"] = parse_auto_int(mini_batches, "--mini-batches", "all")
    flags["label_batch"] = parse_auto_int(label_batch, "--label-batch", "auto")
    cfg = build_config(preset, config, flags)
    wanted = parse_int_list(labels, "--labels") if labels is not None else None
    if restarts > 1 and resume:
        raise CliError("--resume works only for a single run; drop --restarts or --resume")
    if cfg.seed + restarts - 1 > MAX_SEED:  # the library's rule, checked before loading
        raise CliError(f"--restarts {restarts} from seed {cfg.seed} needs seeds up to "
                       f"{cfg.seed + restarts - 1}, but seeds go up to {MAX_SEED}")

    if sarif is not None:
        check_sarif_target(sarif, out, SCAN_OUTPUTS)
    known = known_trigger_files(known_trigger, known_target)
    created = prepare_folder(out, "--out", SCAN_OUTPUTS)  # before any work, even loading
    try:
        inputs = load_inputs(model, data, arch=arch, arch_kwargs=arch_kwargs,
                             trust_pickle=trust_pickle, input_shape=input_shape,
                             channels_first=channels_first, clip_values=clip_values,
                             subtract=subtract, divide=divide, output=output, device=device,
                             x_key=x_key, y_key=y_key, max_samples=max_samples,
                             data_layout=data_layout, seed=cfg.seed)
        console = make_console(stderr=output_format is OutputFormat.json, quiet=quiet)
        result, paths = run_scan(inputs, cfg, out, resume=resume, labels=wanted,
                                 console=console, restarts=restarts, known_trigger=known,
                                 known_target=known_target, checkpoint_every=checkpoint_every)
    except BaseException:
        remove_if_empty(created)  # only folders this run made, and only while still empty
        raise
    code = verdict_exit_code(result.verdict, fail_on)
    if sarif is not None:
        from neuralcleanse.io.sarif import write_sarif

        write_sarif(sarif, result, model, exit_code=code)
    if output_format is OutputFormat.json:
        sys.stdout.write(json_document(result, paths) + "\n")
        sys.stdout.flush()
    raise typer.Exit(code)


#: The verdicts that exit 1 under each ``--fail-on`` value.
FAILING_VERDICTS: dict[FailOn, frozenset[str]] = {
    FailOn.backdoor: frozenset({"backdoor"}),
    FailOn.suspicious: frozenset({"backdoor", "suspicious"}),
    FailOn.never: frozenset(),
}


def verdict_exit_code(verdict: str, fail_on: FailOn) -> int:
    """The exit code of a completed scan: 1 when ``fail_on`` fails ``verdict``, else 0."""
    return EXIT_FLAGGED if verdict in FAILING_VERDICTS[fail_on] else EXIT_CLEAN


def check_sarif_target(path: Path, out: Path, entries: tuple[str, ...]) -> None:
    """Refuse a ``--sarif`` path that cannot be written or is one of the run's own entries.

    Not a folder, and in an existing folder, except that the ``--out`` folder itself counts as
    existing (it is made before the run). Inside ``--out``, ``entries`` (file names, and
    folder names ending in ``/``) belong to the run: a log written over one of them would
    destroy the run's own output.
    """
    target, folder = Path(os.path.abspath(path)).resolve(), Path(os.path.abspath(out)).resolve()
    example = qpath(out / "results.sarif")
    if target == folder:
        raise CliError(f"--sarif {qpath(path)} is the --out folder; give a file name, e.g. "
                       f"{example}")
    if folder in target.parents:
        first = target.relative_to(folder).parts[0].casefold()
        owned = [e for e in entries if e.rstrip("/").casefold() == first]
        if owned:
            raise CliError(f"--sarif {qpath(path)} would overwrite the run's own {owned[0]} in "
                           f"--out {qpath(out)}; give another file name, e.g. {example}")
    if target.parent != folder or path.is_dir():
        check_sarif_path(path)


def check_sarif_path(path: Path) -> None:
    """Refuse a ``--sarif`` path that cannot be written, before the scan starts."""
    if path.is_dir():
        raise CliError(f"--sarif {qpath(path)} is a folder; give a file name, e.g. "
                       f"{qpath(path / 'results.sarif')}")
    if not path.parent.is_dir():
        raise CliError(f"--sarif {qpath(path)}: the folder {qpath(path.parent)} does not "
                       "exist; create it first")


def known_trigger_files(text: str | None, target: int | None
                        ) -> tuple[Path, Path | None] | None:
    """The files of ``--known-trigger`` (mask, optional pattern), checked to exist."""
    if text is None:
        if target is not None:
            raise CliError("--known-target needs --known-trigger MASK_PNG[,PATTERN_PNG]")
        return None
    parts = [part.strip() for part in text.split(",")]
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise CliError(f"--known-trigger takes MASK_PNG or MASK_PNG,PATTERN_PNG (got {text!r})")
    paths = [Path(part) for part in parts]
    for path, what in zip(paths, ("mask", "pattern")):
        if not path.is_file():
            raise CliError(f"--known-trigger {what} file {qpath(path)} does not exist or is "
                           "not a file")
    return paths[0], (paths[1] if len(paths) == 2 else None)


def json_document(result: ScanResult, paths: ReportPaths) -> str:
    """What ``--format json`` prints: the report without the trigger arrays, and its paths.

    The fields are those of ``report.json`` (``neuralcleanse/io/schemas/report.schema.json``)
    less each label's ``mask_shape``, ``pattern_shape``, ``mask`` and ``pattern``, plus
    ``report``: ``{"json": ..., "html": ...}``, the files written. (``model_info`` and
    ``data_info`` are as in ``report.json``, with the known trigger and the stamped examples.)
    """
    document = result.to_dict(arrays=False)
    document["report"] = {"json": str(paths.json), "html": str(paths.html)}
    return dumps(document)


def run_scan(inputs: Inputs, cfg: ScanConfig, out: Path, *, resume: bool = False,
             labels: list[int] | None = None, console: Console | None = None,
             restarts: int = 1, known_trigger: tuple[Path, Path | None] | None = None,
             known_target: int | None = None,
             checkpoint_every: float = CHECKPOINT_EVERY_S) -> tuple[ScanResult, ReportPaths]:
    """Scan with label-by-label saving, write the reports and print the summary.

    Labels are saved as they finish (for ``--resume``) only when ``restarts`` is 1. Returns the
    result and where its reports were written. ``known_trigger`` (mask and pattern image files)
    is read and checked against the model before the scan; the report then shows it beside the
    reversed trigger of ``known_target`` (or of every flagged label). The report also holds
    one stamped example per flagged and per suspicious label with the model's predictions
    (:func:`neuralcleanse.mitigation.examples.stamped_examples`).

    Raises:
        Interrupted: On ``KeyboardInterrupt``, after writing a partial report.
    """
    from neuralcleanse.frontends import api
    from neuralcleanse.io.report import STAMPED_EXAMPLES, summary_table, write_report
    from neuralcleanse.mitigation.examples import stamped_examples

    console = console or make_console()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # prepare warns again below, in scan(), if needed
        clf, images, targets = api.prepare(inputs.model.model, inputs.x, inputs.y,
                                           **inputs.wrap_options())
    assert targets is not None
    known_entry = None
    if known_target is not None and not 0 <= known_target < clf.nb_classes:
        raise CliError(f"--known-target {known_target} is outside the model's labels "
                       f"0..{clf.nb_classes - 1}")
    if known_trigger is not None:
        from neuralcleanse.io.known_trigger import read_known_trigger

        known_entry = read_known_trigger(
            known_trigger[0], known_trigger[1], input_shape=clf.input_shape,
            channels_first=clf.channels_first, clip_values=clf.clip_values,
            label=known_target)
    key = fingerprint(inputs.model.path, images, targets, cfg.search_key(),
                      {k: _jsonable(v) for k, v in inputs.wrap_options().items()
                       if k != "device"})
    store = PartialStore(out / PARTIAL_DIR, key)
    if restarts == 1:
        wanted = labels if labels is not None else list(range(clf.nb_classes))
        in_the_way = store.foreign([t for t in wanted if 0 <= t < clf.nb_classes])
        if in_the_way:
            raise CliError(f"{in_the_way[0]} was not written by neuralcleanse, but the scan "
                           f"saves its finished labels under these names in {store.folder}: "
                           "move the file(s) away or choose another --out")
    done: list[LabelResult] = []
    if resume:
        try:
            done = store.load()
        except InputError as exc:
            raise CliError(f"{exc}; drop --resume to start over") from None
        if done:
            say(console, f"resuming: {len(done)} label(s) already done in {store.folder}")
    else:
        store.clear()
    model_info = inputs.model_info(clf.describe())
    if known_entry is not None:
        model_info["known_trigger"] = known_entry
    data_info = {"n_images": int(len(images)),
                 "class_counts": np.bincount(targets, minlength=clf.nb_classes).tolist(),
                 **inputs.data.info}
    try:
        single = restarts == 1
        state = store.load_checkpoint() if resume and single else None
        if state is not None:
            say(console, "resuming the search mid-way from the checkpoint in "
                         f"{store.folder}")
        result = api.scan(clf, images, targets, config=cfg, labels=labels,
                          on_label_done=store.save if single else None, done=done,
                          restarts=restarts,
                          checkpoint=store.save_checkpoint if single else None,
                          resume_state=state, checkpoint_every_s=checkpoint_every)
    except KeyboardInterrupt:
        finished = store.load()
        partial = ScanResult.from_labels(
            finished, nb_classes=clf.nb_classes, anomaly_threshold=cfg.anomaly_threshold,
            config=cfg.to_dict(), model_info=model_info, data_info=data_info,
            versions=api.versions(), partial=True)
        paths = write_report(partial, out)
        total = len(labels) if labels is not None else clf.nb_classes
        raise Interrupted(f"interrupted: {len(finished)} of {total} labels done; partial "
                          f"report in {paths.html}; rerun with --resume to continue") from None
    result.model_info = model_info
    result.data_info = data_info
    examples = stamped_examples(clf, images, targets, result)  # flagged, then suspicious
    if examples:
        data_info[STAMPED_EXAMPLES] = examples
    result.partial = False
    paths = write_report(result, out)
    store.clear()
    console.print(summary_table(result))
    say(console, f"median norm {result.median_norm:.3f}, MAD {result.mad:.3f}, "
                 f"wall time {result.wall_seconds:.1f} s")
    for line, style in verdict_lines(result):
        say(console, line, style=style)
    say(console, f"report: {paths.html}  (JSON: {paths.json})")
    return result, paths


#: Console style of each verdict's line.
VERDICT_STYLES = {"backdoor": "bold red", "suspicious": "bold yellow", "clean": "bold green"}


def verdict_lines(result: ScanResult) -> list[tuple[str, str | None]]:
    """The lines that end the console summary, with their styles.

    The verdict word and its labels, the labels without clean images, how the verdict was
    reached (the confirmation's extra cost: labels searched again, further seeds, extra
    label-steps as a share of the first pass), and the expected false-alarm rate of the rule
    for this many labels.
    """
    from neuralcleanse.io.verdict_views import confirmation_view, verdict_view

    view = verdict_view(result)
    lines: list[tuple[str, str | None]] = [
        (view["line"], VERDICT_STYLES.get(result.verdict, "bold"))]
    if result.labels_without_data:
        lines.append((f"label(s) {result.labels_without_data} had no clean images: searched "
                      "on the other classes' images, left out of the median and MAD", None))
    confirmation = confirmation_view(result)
    lines.append((f"rule: {confirmation['rule_text']}", None))
    if confirmation["cost_text"]:
        lines.append((f"confirmation: {confirmation['cost_text']}", None))
    lines.append((f"expected false-alarm rate: {confirmation['false_alarm_text']}", None))
    return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value
