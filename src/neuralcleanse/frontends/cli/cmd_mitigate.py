"""``neuralcleanse mitigate``: remove a flagged backdoor, save the repaired model, measure it.

Everything that can be checked without the model (the report, the labels, the mitigation
flags, the output folder and the save path) is checked before the model is loaded. The save
path is never one of the run's inputs (the data, the test data, the scan report; the model only
with ``--overwrite-model``) nor a file the run writes (:func:`check_save_path`).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from neuralcleanse.core.config import MAX_SEED
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import ScanResult
from neuralcleanse.core.strict_json import dumps
from neuralcleanse.frontends.cli.folders import (
    MITIGATE_OUTPUTS,
    prepare_folder,
    remove_if_empty,
    same_file,
)
from neuralcleanse.frontends.cli.inputs import load_inputs
from neuralcleanse.frontends.cli.messages import EXIT_CLEAN, CliError, make_console, qpath, say
from neuralcleanse.frontends.cli.options import (
    MITIGATION_PANEL,
    OUT_PANEL,
    ArchKwargsOpt,
    ArchOpt,
    ChannelsOpt,
    ClipOpt,
    DataLayout,
    DataOpt,
    DeviceOpt,
    DivideOpt,
    InputShapeOpt,
    LayoutOpt,
    MaxSamplesOpt,
    Method,
    ModelArg,
    OutputKind,
    OutputOpt,
    SubtractOpt,
    TrustPickleOpt,
    XKeyOpt,
    YKeyOpt,
    parse_int_list,
)
from neuralcleanse.io.data_files import load_data, to_layout
from neuralcleanse.io.filter_files import FILTER_JSON
from neuralcleanse.mitigation import METHODS
from neuralcleanse.mitigation.filtering import (
    MAX_NEURONS_LIMIT,
    RANKINGS,
    SCORES,
    check_ranking,
    check_score,
)
from neuralcleanse.mitigation.inputs import check_fraction, check_int, check_positive
from neuralcleanse.mitigation.metrics import DEFAULT_TEST_FRACTION, check_test_fraction
from neuralcleanse.mitigation.unlearning import (
    MAX_EPOCHS,
    MAX_LEARNING_RATE,
    MAX_MIN_UPDATES,
    MAX_ROUNDS,
)

#: Model formats that can be scanned but not mitigated (their layers cannot be hooked, trained
#: and saved back in their format).
SCAN_ONLY_FORMATS = ("torchscript", "torch.export")

#: Mitigation flags: option name -> (flag, the library's check of the value). The methods a
#: flag applies to are the library's (:data:`neuralcleanse.mitigation.METHODS`); the checks are
#: called here, before the model is loaded, so that a bad value costs nothing.
MITIGATION_FLAGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "epochs": ("--epochs", lambda v: check_int("epochs", v, 1, MAX_EPOCHS)),
    "learning_rate": ("--learning-rate",
                      lambda v: check_positive("learning_rate", v, MAX_LEARNING_RATE)),
    "stamped_fraction": ("--stamped-fraction", lambda v: check_fraction("stamped_fraction", v)),
    "min_updates": ("--min-updates", lambda v: check_int("min_updates", v, 0, MAX_MIN_UPDATES)),
    "rounds": ("--rounds", lambda v: check_int("rounds", v, 1, MAX_ROUNDS)),
    "all_seeds": ("--all-seeds or --kept-trigger-only", lambda v: v),
    "max_fraction": ("--max-fraction", lambda v: check_fraction("max_fraction", v)),
    "target_asr": ("--target-asr", lambda v: check_fraction("target_asr", v, allow_zero=True)),
    "score": ("--score", check_score),
    "top_fraction": ("--top-fraction", lambda v: check_fraction("top_fraction", v)),
    "target_fpr": ("--target-fpr", lambda v: check_fraction("target_fpr", v, allow_one=False)),
    "fpr_confidence": ("--fpr-confidence",
                       lambda v: check_fraction("fpr_confidence", v, allow_one=False)),
    "ranking": ("--ranking", check_ranking),
    "max_neurons": ("--max-neurons",
                    lambda v: check_int("max_neurons", v, 1, MAX_NEURONS_LIMIT)),
    "test_fraction": ("--test-fraction", check_test_fraction),
}


def mitigate(
    model: ModelArg,
    data: DataOpt,
    report: Annotated[Path, typer.Option(
        "--report", "-r", rich_help_panel=MITIGATION_PANEL, show_default=False,
        help="The scan's report folder (or its report.json): the flagged labels and their "
             "reversed triggers.")],
    method: Annotated[Method, typer.Option(
        "--method", "-m", rich_help_panel=MITIGATION_PANEL, case_sensitive=False,
        help="unlearning (fine-tune), pruning (silence neurons) or filtering (refuse "
             "triggered inputs).")] = Method.unlearning,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", rich_help_panel=OUT_PANEL,
        help="Folder for mitigation.json, the repaired model (filtering: filter.json, the "
             "input filter) and the re-rendered report (default: the report folder); created "
             "if needed and checked before the model is loaded. Those names (and report.json, "
             "copied from --report) are replaced; nothing else in the folder is touched.")
    ] = None,
    save: Annotated[Path | None, typer.Option(
        "--save", rich_help_panel=OUT_PANEL,
        help="Where to save the repaired model (default: OUT/repaired_METHOD.pt, .safetensors "
             "for a safetensors model, or .keras; "
             "which a later run replaces). An existing file, and above all the input model "
             "itself (also through a link), is never replaced unless --overwrite-model is "
             "given. Filtering leaves the model unchanged and saves the input filter instead: "
             "a .json file (default OUT/filter.json) that 'neuralcleanse filter' applies. "
             "Never the data, the test data, the scan report or a file this run writes "
             "(mitigation.json, report.json, report.html, the trigger images).")
    ] = None,
    overwrite_model: Annotated[bool, typer.Option(
        "--overwrite-model", rich_help_panel=OUT_PANEL,
        help="Let the repaired model replace an existing file: the --save file, or the input "
             "model itself when --save (or the default path) names it. The new file is "
             "written completely before it replaces the old one. (A filter never replaces "
             "the input model.)")] = False,
    labels: Annotated[str | None, typer.Option(
        "--labels", metavar="LIST", rich_help_panel=MITIGATION_PANEL,
        help="Labels to mitigate (default: the flagged ones).")] = None,
    layer: Annotated[str | None, typer.Option(
        "--layer", rich_help_panel=MITIGATION_PANEL,
        help="Layer for pruning/filtering (default: the input of the final classification "
             "layer).")] = None,
    test_data: Annotated[Path | None, typer.Option(
        "--test-data", rich_help_panel=MITIGATION_PANEL,
        help="Held-out clean data for the before/after measurements (default: a seeded split "
             "of --data).")] = None,
    test_fraction: Annotated[float | None, typer.Option(
        "--test-fraction", rich_help_panel=MITIGATION_PANEL,
        help="Share of --data held out when no --test-data is given (default "
             f"{DEFAULT_TEST_FRACTION:g}).")] = None,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", rich_help_panel=MITIGATION_PANEL,
        help="Unlearning: fine-tuning epochs.")] = None,
    learning_rate: Annotated[float | None, typer.Option(
        "--learning-rate", rich_help_panel=MITIGATION_PANEL,
        help="Unlearning: learning rate.")] = None,
    stamped_fraction: Annotated[float | None, typer.Option(
        "--stamped-fraction", rich_help_panel=MITIGATION_PANEL,
        help="Unlearning: share of training images stamped with the reversed trigger.")
    ] = None,
    min_updates: Annotated[int | None, typer.Option(
        "--min-updates", rich_help_panel=MITIGATION_PANEL,
        help="Unlearning: fewest optimiser updates; more epochs run on a small --data.")
    ] = None,
    rounds: Annotated[int | None, typer.Option(
        "--rounds", rich_help_panel=MITIGATION_PANEL,
        help="Unlearning: rounds the updates are split into; before each one after the first "
             "the flagged labels' triggers are searched again with the scan's settings "
             "(default 1: the scan's triggers only, in one run).")] = None,
    all_seeds: Annotated[bool | None, typer.Option(
        "--all-seeds/--kept-trigger-only", rich_help_panel=MITIGATION_PANEL,
        show_default=False,
        help="Unlearning: stamp every trigger the scan's confirmation found for a label "
             "(its other seeds too; the default), or only the kept one.")] = None,
    max_fraction: Annotated[float | None, typer.Option(
        "--max-fraction", rich_help_panel=MITIGATION_PANEL,
        help="Pruning: most neurons of the layer to prune.")] = None,
    target_asr: Annotated[float | None, typer.Option(
        "--target-asr", rich_help_panel=MITIGATION_PANEL,
        help="Pruning: stop once the reversed trigger's success is below this.")] = None,
    score: Annotated[str | None, typer.Option(
        "--score", rich_help_panel=MITIGATION_PANEL,
        help=f"Filtering: how the watched neurons score an input ({', '.join(SCORES)}): "
             "weighted by Fisher's discriminant between triggered and clean inputs "
             "(default), or their mean (the paper's filter).")] = None,
    top_fraction: Annotated[float | None, typer.Option(
        "--top-fraction", rich_help_panel=MITIGATION_PANEL,
        help="Filtering: share of the layer's neurons that score an input (default: all "
             "for --score fisher, 0.1 for mean).")] = None,
    target_fpr: Annotated[float | None, typer.Option(
        "--target-fpr", rich_help_panel=MITIGATION_PANEL,
        help="Filtering: false-positive rate on clean inputs (default 0.05).")] = None,
    fpr_confidence: Annotated[float | None, typer.Option(
        "--fpr-confidence", rich_help_panel=MITIGATION_PANEL,
        help="Filtering: probability that new clean inputs are refused at no more than "
             "--target-fpr (default 0.8; 0.5: on average).")] = None,
    ranking: Annotated[str | None, typer.Option(
        "--ranking", rich_help_panel=MITIGATION_PANEL,
        help=f"Filtering: how trigger neurons are ranked ({', '.join(RANKINGS)}): their rise "
             "under the reversed trigger over the flagged label's own clean images (target), "
             "that rise over the clean spread (target_z), or over all clean images.")] = None,
    max_neurons: Annotated[int | None, typer.Option(
        "--max-neurons", rich_help_panel=MITIGATION_PANEL,
        help="Filtering: most neurons per label (caps --top-fraction; default 2048 for "
             "--score fisher, 16 for mean).")] = None,
    seed: Annotated[int, typer.Option(
        "--seed", min=0, max=MAX_SEED, rich_help_panel=MITIGATION_PANEL,
        help="Seed of the split and of random choices.")] = 0,
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
) -> None:
    """Mitigate the backdoor a scan flagged; save the repaired model and the measurements.

    Model flags not given (channel order, value range, preprocessing, output kind) default to
    what the scan report recorded. The report then shows each of the scan's stamped examples
    with the repaired model's predictions or the filter's decisions.
    """
    from neuralcleanse import mitigation as mitigation_module
    from neuralcleanse.frontends import api
    from neuralcleanse.io.report import (
        MITIGATION_JSON,
        REPORT_JSON,
        STAMPED_EXAMPLES,
        atomic_write,
        render_directory,
    )
    from neuralcleanse.mitigation.examples import examples_after

    # everything that can be checked without the model is checked first
    if report.is_file() and report.name != REPORT_JSON:
        raise CliError(f"--report takes a scan's folder or its {REPORT_JSON} (got "
                       f"{qpath(report.name)})")
    report_dir = report if report.is_dir() else report.parent
    report_json = report / REPORT_JSON if report.is_dir() else report
    if not report_json.is_file():
        raise CliError(f"no scan report at {qpath(report_json)}: give the folder a scan "
                       "wrote")
    chosen = parse_int_list(labels, "--labels") if labels is not None else None
    options = mitigation_options(method, layer, dict(
        epochs=epochs, learning_rate=learning_rate, stamped_fraction=stamped_fraction,
        min_updates=min_updates, rounds=rounds, all_seeds=all_seeds,
        max_fraction=max_fraction,
        target_asr=target_asr,
        score=score, top_fraction=top_fraction, target_fpr=target_fpr,
        fpr_confidence=fpr_confidence, ranking=ranking, max_neurons=max_neurons,
        test_fraction=test_fraction))
    extra: dict[str, Any] = {}
    if "test_fraction" in options:
        extra["test_fraction"] = options.pop("test_fraction")
    if test_data is not None and not test_data.exists():
        raise CliError(f"--test-data {qpath(test_data)} does not exist")
    if save is not None and method is Method.filtering and save.suffix.lower() != ".json":
        raise CliError(f"--save {qpath(save)}: filtering leaves the model unchanged and saves "
                       "the input filter, a JSON file: give a name ending in .json")
    scan_result = ScanResult.from_json(report_json)
    for trigger in mitigation_module.select_triggers(scan_result, chosen):  # flagged, scanned
        if not (np.isfinite(trigger.mask).all() and np.isfinite(trigger.pattern).all()):
            raise CliError(f"the reversed trigger of label {trigger.label} in "
                           f"{qpath(report_json)} has missing or non-finite values (null): "
                           "scan the model again")
    target = out or report_dir
    created = prepare_folder(target, "--out" if out is not None else "--report",
                             MITIGATE_OUTPUTS)
    inputs_given = [("--data", data, "the data"), ("--report", report_json, "the scan report")]
    if test_data is not None:
        inputs_given.append(("--test-data", test_data, "the test data"))
    try:
        filter_path: Path | None = None
        if method is Method.filtering:
            filter_path = save or target / FILTER_JSON
            check_save_path(filter_path, "filter", model=model, inputs=inputs_given,
                            out=target, overwrite=overwrite_model, explicit=save is not None)
        elif save is not None:
            check_save_path(save, "repaired model", model=model, inputs=inputs_given,
                            out=target, overwrite=overwrite_model, explicit=True)
        if save is not None:
            created += prepare_folder(save.parent, "--save's folder")
        inputs = load_inputs(model, data, arch=arch, arch_kwargs=arch_kwargs,
                             trust_pickle=trust_pickle, input_shape=input_shape,
                             channels_first=channels_first, clip_values=clip_values,
                             subtract=subtract, divide=divide, output=output, device=device,
                             x_key=x_key, y_key=y_key, max_samples=max_samples,
                             data_layout=data_layout, seed=seed,
                             defaults=scan_result.model_info)
        if inputs.model.format in SCAN_ONLY_FORMATS:
            raise CliError(f"a {inputs.model.format} model can be scanned but not mitigated "
                           "(its layers cannot be hooked, trained and saved back in its format "
                           "here): save its state dict and use --arch")
        save_path: Path | None = None
        if method is not Method.filtering:
            keras = inputs.model.framework == "keras"
            suffix = (".keras" if keras else ".safetensors"
                      if inputs.model.format == "safetensors" else ".pt")
            save_path = save_target(save or target / f"repaired_{method.value}{suffix}", keras)
            check_save_path(save_path, "repaired model", model=model, inputs=inputs_given,
                            out=target, overwrite=overwrite_model, explicit=save is not None)
        if test_data is not None:
            test = load_data(test_data, x_key=x_key, y_key=y_key,
                             image_size=inputs.x.shape[1:3] if not inputs.channels_first
                             else inputs.x.shape[2:4])
            extra["x_test"], _ = to_layout(test.x, inputs.channels_first, data_layout.value)
            extra["y_test"] = test.y
        layer_spec: str | int | None = layer
        if layer is not None and re.fullmatch(r"-?[0-9]{1,9}", layer):
            layer_spec = int(layer)
        result = api.mitigate(
            inputs.model.model, inputs.x, inputs.y, scan_result, method=method.value,
            layer=layer_spec, labels=chosen, seed=seed, **inputs.wrap_options(), **extra,
            **options)
    except BaseException:
        remove_if_empty(created)
        raise
    mitigation_dict = result.to_dict()
    examples = scan_result.data_info.get(STAMPED_EXAMPLES)
    if isinstance(examples, list) and examples:  # the report's examples, after the mitigation
        mitigation_dict[STAMPED_EXAMPLES] = examples_after(result, examples)
    console = make_console()
    if save_path is not None:
        saved = save_model(result, save_path)
        mitigation_dict["saved_model"] = saved
        say(console, f"repaired model: {saved}")
    if filter_path is not None:
        result.save(filter_path, model_sha256=inputs.model.info.get("file_sha256"))
        mitigation_dict["saved_filter"] = str(filter_path)
        say(console, f"input filter: {filter_path}  (apply it with: neuralcleanse filter "
                     f"MODEL --filter {filter_path} --data INPUTS)")
    atomic_write(target / MITIGATION_JSON, dumps(mitigation_dict))
    if not same_file(report_json, target / REPORT_JSON):
        atomic_write(target / REPORT_JSON, report_json.read_bytes())
    paths = render_directory(target)
    say(console, result.summary())
    say(console, f"report: {paths.html}  (JSON: {target / MITIGATION_JSON})")
    raise typer.Exit(EXIT_CLEAN)


def mitigation_options(method: Method, layer: str | None, given: dict[str, Any]
                       ) -> dict[str, Any]:
    """Check the mitigation flags that were given against their method and range.

    The ranges are the library's checks; their messages get the flag's name.
    """
    if layer is not None and method is Method.unlearning:
        raise CliError("--layer applies to pruning and filtering (unlearning fine-tunes the "
                       "whole model)")
    options = {}
    for name, value in given.items():
        if value is None:
            continue
        flag, check = MITIGATION_FLAGS[name]
        methods = [m for m, accepted in METHODS.items() if name in accepted] or list(METHODS)
        if method.value not in methods:
            raise CliError(f"{flag} applies to --method {' or '.join(methods)}, not "
                           f"{method.value}")
        try:
            check(value)
        except InputError as exc:
            text = str(exc)
            raise CliError(f"{flag} {text[len(name) + 1:]}" if text.startswith(f"{name} ")
                           else f"{flag}: {text}") from None
        options[name] = value
    return options


def save_target(path: Path, keras: bool) -> Path:
    """The file the repaired model goes to: Keras adds ``.keras``; a link is followed."""
    if keras and path.suffix not in (".keras", ".h5"):
        path = path.with_name(path.name + ".keras")
    return path.resolve() if path.is_symlink() else path


def check_save_path(path: Path, saving: str, *, model: Path,
                    inputs: list[tuple[str, Path, str]], out: Path, overwrite: bool,
                    explicit: bool) -> None:
    """Refuse a save path that would destroy the user's input or another output of the run.

    Refused whatever the flags: a folder; one of ``inputs`` (``(flag, path, what)``: the data,
    the scan report, the test data); a file this run writes into the output folder ``out``
    (:data:`~neuralcleanse.frontends.cli.folders.MITIGATE_OUTPUTS`, the trigger images
    included), which would replace what was saved, or be replaced by it. The input model is
    refused unless ``overwrite`` lets the repaired model replace it (a filter never does); any
    other existing file needs ``overwrite`` when the path was given (``explicit``). Paths are
    compared after resolving links, and hard links to one file count as that file.

    Args:
        path: Where the ``saving`` (``"repaired model"`` or ``"filter"``) is to be written.
        saving: What is saved, for the message.
        model: The input model's path.
        inputs: The other input files, as ``(flag, path, what)``.
        out: The output folder.
        overwrite: ``--overwrite-model``.
        explicit: Whether the path is ``--save``'s (else the default path).

    Raises:
        CliError: When the path is refused (one line naming it and why).
    """
    shown = qpath(path)
    if explicit:
        where = f"--save {shown}"
    else:
        where = (f"the filter's default path {shown}" if saving == "filter" else
                 f"the default save path {shown}")

    def same(other: Path) -> bool:
        return same_file(path, other) or path.resolve() == other.resolve()

    if path.is_dir():
        raise CliError(f"{where} is a folder: give the file to write")
    if same(model):
        if saving == "filter":
            raise CliError(f"{where} is the input model, which the filter would replace: save "
                           "it elsewhere")
        if not overwrite:
            raise CliError(f"{where} is the input model, which the repaired model would "
                           "replace: save elsewhere, or add --overwrite-model if you mean it")
        return
    for flag, given, what in inputs:
        if same(given):
            raise CliError(f"{where} is {what} ({flag}), which the {saving} would replace: "
                           "save it elsewhere")
    for name in MITIGATE_OUTPUTS:
        written = out / name.rstrip("/")
        if name.endswith("/"):
            if path.resolve().is_relative_to(written.resolve()):
                raise CliError(f"{where} is inside {qpath(written)}, a folder of files this "
                               "command writes: save it elsewhere")
        elif same(written):
            raise CliError(f"{where} is {qpath(name)}, a file this command writes into the "
                           f"output folder, which would replace the {saving}: choose another "
                           "name")
    if explicit and (path.exists() or path.is_symlink()) and not overwrite:
        raise CliError(f"{where} exists: choose another path, or add --overwrite-model to "
                       "replace it")


def save_model(result: Any, path: Path) -> str:
    """Save the repaired model next to ``path`` and rename it over ``path`` once complete."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        written = Path(result.save(str(tmp)))
        os.replace(written, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(path)
