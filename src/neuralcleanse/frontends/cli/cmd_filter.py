"""``neuralcleanse filter``: apply a saved input filter to inputs, say which ones it refuses.

The filter file is one that ``neuralcleanse mitigate --method filtering --save FILE`` (or
``InputFilter.save``) wrote; it is read as untrusted JSON and checked against the model
(:func:`neuralcleanse.io.filter_loading.load_filter`). The model is loaded as ``scan`` loads it,
with the same flags; the layout, value range, output kind and preprocessing default to what the
filter file records. The inputs need no labels (deployment inputs have none); labels the data
holds are shown beside the decisions. Everything that can be checked without the model (the
filter file, the output path) is checked before the model is loaded. The library's messages are
put in flag wording by :func:`~neuralcleanse.frontends.cli.messages.to_flags`, as for scan.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from neuralcleanse.core.strict_json import dumps, finite_or_none
from neuralcleanse.frontends.cli.cmd_mitigate import SCAN_ONLY_FORMATS
from neuralcleanse.frontends.cli.folders import same_file
from neuralcleanse.frontends.cli.inputs import load_inputs
from neuralcleanse.frontends.cli.messages import EXIT_CLEAN, CliError, make_console, qpath, say
from neuralcleanse.frontends.cli.options import (
    DATA_PANEL,
    MITIGATION_PANEL,
    OUT_PANEL,
    ArchKwargsOpt,
    ArchOpt,
    ChannelsOpt,
    ClipOpt,
    DataLayout,
    DeviceOpt,
    DivideOpt,
    InputShapeOpt,
    LayoutOpt,
    ModelArg,
    OutputFormat,
    OutputKind,
    OutputOpt,
    SubtractOpt,
    TrustPickleOpt,
    XKeyOpt,
    YKeyOpt,
)

#: The ``format`` of the decisions document (``--out`` and ``--format json``).
DECISIONS_FORMAT = "neuralcleanse-filter-decisions"
DECISIONS_SCHEMA_VERSION = 1
#: Most inputs scored in one forward pass (``--batch-size``).
MAX_BATCH_SIZE = 65_536


def filter_command(
    model: ModelArg,
    filter_file: Annotated[Path, typer.Option(
        "--filter", "-f", rich_help_panel=MITIGATION_PANEL, show_default=False,
        help="The input filter: the JSON file 'mitigate --method filtering --save FILE' "
             "wrote. Read as untrusted data (nothing in it is run) and checked against MODEL.")],
    data: Annotated[Path, typer.Option(
        "--data", "-d", rich_help_panel=DATA_PANEL, show_default=False,
        help="The inputs to filter: an .npz file (its labels, if it has any, are shown beside "
             "the decisions; an archive of one array is read as the images) or a folder with "
             "one sub-folder per class, read as scan reads its data.")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", rich_help_panel=OUT_PANEL,
        help="Also write the decisions as JSON to this file (replaced if it exists; never the "
             "model, the filter or the data).")] = None,
    ignore_sha256: Annotated[bool, typer.Option(
        "--ignore-sha256", rich_help_panel=MITIGATION_PANEL,
        help="Use the filter even when MODEL's SHA-256 differs from the one the filter file "
             "records (the filter was fitted on another model file).")] = False,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, max=MAX_BATCH_SIZE, rich_help_panel=MITIGATION_PANEL,
        help="Inputs per forward pass.")] = 256,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", rich_help_panel=OUT_PANEL, case_sensitive=False,
        help="What stdout carries: text (one line per input and a summary) or json (exactly "
             "one JSON document, the one --out writes; the other lines go to stderr).")
    ] = OutputFormat.text,
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
    data_layout: LayoutOpt = DataLayout.auto,
) -> None:
    """Apply a saved input filter: refuse the inputs that carry a reversed trigger.

    Prints, per input, whether it is refused, its score and, for an accepted input, the
    model's prediction; --out writes the same as JSON. Model flags not given (channel order,
    value range, preprocessing, output kind) default to what the filter file records. Exit
    code 0 when the inputs were filtered (whether or not some were refused), 2 on usage or
    input errors (a bad or mismatched filter file included), 3 on an internal error.
    """
    from neuralcleanse.frontends import api
    from neuralcleanse.io.filter_files import read_filter_file
    from neuralcleanse.io.filter_loading import load_filter
    from neuralcleanse.io.report import atomic_write

    # everything that can be checked without the model is checked first
    spec = read_filter_file(filter_file)
    if out is not None:
        check_out(out, (model, filter_file, data))
    if isinstance(spec.model["preprocessing"], str) and subtract is None and divide is None:
        raise CliError(f"{qpath(filter_file)} was fitted with a preprocessing function "
                       f"({spec.model['preprocessing']!r}), which the command line cannot "
                       "rebuild: give it as --subtract and --divide if it is (x - a) / b, or "
                       "load the filter in Python with load_filter, passing the function "
                       "again")
    inputs = load_inputs(model, data, arch=arch, arch_kwargs=arch_kwargs,
                         trust_pickle=trust_pickle, input_shape=input_shape,
                         channels_first=channels_first, clip_values=clip_values,
                         subtract=subtract, divide=divide, output=output, device=device,
                         x_key=x_key, y_key=y_key, max_samples=None, data_layout=data_layout,
                         seed=0, defaults=spec.model_defaults(), require_labels=False)
    if inputs.model.format in SCAN_ONLY_FORMATS:
        raise CliError(f"a {inputs.model.format} model can be scanned but not filtered (its "
                       "layers cannot be hooked here): save its state dict and use --arch")
    filt = load_filter(filter_file, inputs.model.model,  # its errors: exit 2, in flag wording
                       model_path=model if model.is_file() else None,
                       ignore_sha256=ignore_sha256, **inputs.wrap_options())
    _, images, labels = api.prepare(filt.classifier, inputs.x, inputs.y)
    decided = filt.decisions(images, batch_size=batch_size)
    document = decisions_document(decided, labels, model=model, filter_file=filter_file,
                                  data=data, file_info=filt.file_info)
    text = dumps(document)
    if out is not None:
        atomic_write(out, text + "\n")
    console = make_console(stderr=output_format is OutputFormat.json)
    if output_format is OutputFormat.text:  # numbers and fixed words only: printed as they are
        for line in decision_lines(document):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    say(console, summary_line(document))
    if out is not None:
        say(console, f"decisions: {out}")
    if output_format is OutputFormat.json:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    raise typer.Exit(EXIT_CLEAN)


def check_out(out: Path, inputs: tuple[Path, ...]) -> None:
    """Refuse an ``--out`` that is a folder, has no folder, or is one of the inputs."""
    if out.is_dir():
        raise CliError(f"--out {qpath(out)} is a folder; give a file name, e.g. "
                       f"{qpath(out / 'decisions.json')}")
    if not out.parent.is_dir():
        raise CliError(f"--out {qpath(out)}: the folder {qpath(out.parent)} does not exist; "
                       "create it first")
    for given in inputs:
        if same_file(out, given) or out.resolve() == given.resolve():
            raise CliError(f"--out {qpath(out)} is one of the inputs ({qpath(given)}), which "
                           "the decisions would replace: write them elsewhere")


def decisions_document(decided: Any, labels: Any, *, model: Path, filter_file: Path,
                       data: Path, file_info: dict[str, Any]) -> dict[str, Any]:
    """The decisions as JSON: the files, the threshold, the counts and one entry per input.

    Each input has ``index``, ``refused``, ``score`` (``null`` if not finite),
    ``prediction`` (``null`` when refused) and ``label`` (the data's; ``null`` when
    ``labels`` is ``None``, data without labels).
    """
    refused = [bool(r) for r in decided.refused]
    known = [None] * len(refused) if labels is None else [int(t) for t in labels]
    entries = [{"index": i, "refused": r, "score": finite_or_none(score),
                "prediction": None if r else int(pred), "label": label}
               for i, (r, score, pred, label) in enumerate(
                   zip(refused, decided.scores, decided.predictions, known))]
    n = len(entries)
    return {"format": DECISIONS_FORMAT, "schema_version": DECISIONS_SCHEMA_VERSION,
            "model": str(model), "filter": str(filter_file), "data": str(data),
            "threshold": float(decided.threshold),
            "target_fpr": file_info.get("target_fpr"),
            "fpr_confidence": file_info.get("fpr_confidence"),
            "false_positive_rate": file_info.get("false_positive_rate"),
            "detection_rate": file_info.get("detection_rate"),
            "n_inputs": n, "n_refused": sum(refused),
            "refused_rate": sum(refused) / n if n else None, "inputs": entries}


def decision_lines(document: dict[str, Any]) -> list[str]:
    """One line per input: index, decision, score, prediction and label (when the data has)."""
    labelled = any(entry["label"] is not None for entry in document["inputs"])
    head = f"{'input':>7}  {'decision':<8}  {'score':>9}  {'prediction':>10}"
    lines = [f"{head}  {'label':>5}" if labelled else head]
    for entry in document["inputs"]:
        score = "n/a" if entry["score"] is None else f"{entry['score']:.3f}"
        prediction = "-" if entry["prediction"] is None else str(entry["prediction"])
        decision = "REFUSED" if entry["refused"] else "accepted"
        line = f"{entry['index']:>7}  {decision:<8}  {score:>9}  {prediction:>10}"
        lines.append(f"{line}  {entry['label']:>5}" if labelled else line)
    return lines


def summary_line(document: dict[str, Any]) -> str:
    """How many inputs were refused, at which threshold, and what the filter was fitted for."""
    n, refused = document["n_inputs"], document["n_refused"]
    share = f" ({refused / n:.1%})" if n else ""
    fitted = []
    if document["target_fpr"] is not None:
        held = ("" if document.get("fpr_confidence") is None
                else f" (held with {document['fpr_confidence']:.0%} confidence)")
        fitted.append(f"fitted for a {document['target_fpr']:.1%} false-positive rate{held}")
    if document["false_positive_rate"] is not None:
        fitted.append(f"measured {document['false_positive_rate']:.1%} on clean inputs")
    if document["detection_rate"] is not None:
        fitted.append(f"{document['detection_rate']:.1%} of reversed-trigger inputs refused")
    about = f"; {', '.join(fitted)}" if fitted else ""
    return (f"filtered {n} input(s): {refused} refused{share}, {n - refused} accepted; "
            f"threshold {document['threshold']:.4g}{about}")
