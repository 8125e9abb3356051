"""``mitigate --method filtering --save`` then ``filter``: a deployable input filter.

A small CNN is trained here on scikit-learn's 8x8 digits with a planted trigger (a 2x2 white
square at the bottom-right -> label 3) and saved as a state dict; the scan report it is
mitigated from is written here too (label 3 flagged, its reversed trigger the planted one), so
no search runs. Broken and hostile filter files are built at test time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import neuralcleanse as nc
from neuralcleanse.backends.torch.architectures import small_cnn
from neuralcleanse.backends.torch.training import seeded, train_classifier
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.frontends import cli
from neuralcleanse.frontends.cli import cmd_filter
from neuralcleanse.io.digits import digits_images, stamp_square
from neuralcleanse.io.report import write_report
from torch_models import poisoned_training_set

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGET = 3
WIDTH = 8
ARCH = ["--arch", "neuralcleanse.backends.torch.architectures:small_cnn", "--arch-kwargs",
        json.dumps({"image_size": 8, "width": WIDTH})]




def label_result(label: int, norm: float) -> LabelResult:
    mask = np.zeros((8, 8), np.float32)
    if label == TARGET:
        mask[6:, 6:] = 1.0
    else:  # a larger, diffuse trigger: the other labels are not flagged
        mask[:] = norm / 64
    return LabelResult(label=label, mask=mask, pattern=np.ones((1, 8, 8), np.float32),
                       norm=norm, attack_success_rate=1.0, converged=True, steps=10,
                       seconds=0.1, final_cost=0.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The backdoored model's weights, clean fitting data, inputs to filter, a scan report."""
    root = tmp_path_factory.mktemp("filter")
    x, y = digits_images()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    xp, yp = poisoned_training_set(x[:1000], y[:1000], TARGET, 2, 0.1, seed=0)
    seeded(0)
    model = train_classifier(small_cnn(image_size=8, width=WIDTH), xp, yp, seed=0, epochs=15)
    torch.save(model.state_dict(), root / "model.pt")
    np.savez(root / "clean.npz", x=x[1000:1400], y=y[1000:1400])
    x_test, y_test = x[1400:1550], y[1400:1550]
    others = y_test != TARGET
    inputs_x = np.concatenate([x_test, stamp_square(x_test[others], 2)])
    inputs_y = np.concatenate([y_test, y_test[others]])
    np.savez(root / "inputs.npz", x=inputs_x, y=inputs_y)
    np.savez(root / "unlabelled.npz", images=inputs_x)  # deployment inputs: no labels
    np.savez(root / "one_array.npz", inputs_x)  # stored as 'arr_0'
    norms = [20.0, 22.0, 19.0, 4.0, 21.0, 23.0, 18.0, 20.5, 22.5, 21.5]
    result = ScanResult.from_labels(
        [label_result(t, n) for t, n in enumerate(norms)], nb_classes=10, anomaly_threshold=2.0,
        config={}, model_info={"framework": "pytorch", "channels_first": True,
                               "clip_values": [0.0, 1.0], "output": "logits"},
        data_info={"n_images": 400})
    assert result.flagged_labels == [TARGET]
    write_report(result, root / "scan")
    seeded(5)  # a model of the same architecture with other weights
    torch.save(small_cnn(image_size=8, width=WIDTH).state_dict(), root / "other.pt")
    torch.save(small_cnn(image_size=8, width=WIDTH, nb_classes=5).state_dict(),
               root / "five.pt")
    return {"root": root, "model": model, "x": x[1000:1400], "y": y[1000:1400],
            "inputs_x": inputs_x, "inputs_y": inputs_y, "n_clean": len(x_test)}


def path(files: dict, name: str) -> Path:
    return files["root"] / name


def mitigate_args(files: dict, out: Path, *extra: str) -> list[str]:
    return ["mitigate", str(path(files, "model.pt")), "--data", str(path(files, "clean.npz")),
            "--report", str(path(files, "scan")), "--method", "filtering", "--out", str(out),
            "--top-fraction", "0.1", *ARCH, *extra]


def filter_args(files: dict, filter_file: Path, *extra: str, model: str = "model.pt",
                arch_kwargs: dict | None = None, data: str = "inputs.npz") -> list[str]:
    arch = ARCH if arch_kwargs is None else [*ARCH[:3], json.dumps(arch_kwargs)]
    return ["filter", str(path(files, model)), "--filter", str(filter_file), "--data",
            str(path(files, data)), *arch, *extra]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("neuralcleanse: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def saved(files: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The filter that ``mitigate --method filtering --save`` wrote."""
    out = tmp_path_factory.mktemp("mitigated")
    target = out / "deploy" / "filter.json"
    assert cli.run(mitigate_args(files, out, "--save", str(target))) == cli.EXIT_CLEAN
    return target


# -- the round trip ----------------------------------------------------------------------------
def test_mitigate_saves_the_filter_python_would_fit(files: dict, saved: Path) -> None:
    doc = json.loads(saved.read_text())
    model_sha = hashlib.sha256(path(files, "model.pt").read_bytes()).hexdigest()
    assert doc["model"]["file_sha256"] == model_sha
    mitigation = json.loads((saved.parent.parent / "mitigation.json").read_text())
    assert mitigation["saved_filter"] == str(saved) and "saved_model" not in mitigation
    # the same fit in Python, from the same data and settings
    trigger = ScanResult.from_json(path(files, "scan") / "report.json").label(TARGET)
    fitted = nc.mitigate(files["model"], files["x"], files["y"], [trigger], "filtering",
                         top_fraction=0.1).model
    assert doc["threshold"] == fitted.threshold
    assert doc["labels"][0]["neurons"] == fitted.neurons[TARGET].tolist()
    assert doc["false_positive_rate"] == fitted.report.false_positive_rate


def test_fpr_confidence_flag_reaches_the_filter_and_its_file(files: dict, saved: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "even"
    target = out / "filter.json"
    assert cli.run(mitigate_args(files, out, "--fpr-confidence", "0.5", "--save",
                                 str(target))) == cli.EXIT_CLEAN
    even, default = json.loads(target.read_text()), json.loads(saved.read_text())
    assert even["fpr_confidence"] == 0.5 and default["fpr_confidence"] == 0.8
    mitigation = json.loads((out / "mitigation.json").read_text())
    assert mitigation["report"]["options"]["fpr_confidence"] == 0.5
    assert even["threshold"] < default["threshold"]  # aiming at 5 % on average refuses more


def test_filter_command_gives_the_decisions_of_python(files: dict, saved: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    out = tmp_path / "decisions.json"
    code = cli.run(filter_args(files, saved, "--out", str(out), "--format", "json"))
    captured = capsys.readouterr()
    assert code == cli.EXIT_CLEAN, captured.err
    printed = json.loads(captured.out)  # stdout carries exactly the document
    assert printed == json.loads(out.read_text())
    python = nc.load_filter(saved, files["model"]).decisions(files["inputs_x"])
    entries = printed["inputs"]
    assert len(entries) == len(files["inputs_x"]) == printed["n_inputs"]
    assert [e["refused"] for e in entries] == python.refused.tolist()
    assert [e["score"] for e in entries] == [float(s) for s in python.scores]
    assert [e["prediction"] for e in entries] == [
        None if r else int(p) for r, p in zip(python.refused, python.predictions)]
    assert [e["label"] for e in entries] == files["inputs_y"].tolist()
    assert printed["n_refused"] == int(python.refused.sum())
    n = files["n_clean"]
    assert python.refused[n:].mean() >= 0.6 and python.refused[:n].mean() <= 0.2
    # the text form: a line per input and the summary
    assert cli.run(filter_args(files, saved)) == cli.EXIT_CLEAN
    text = capsys.readouterr().out.splitlines()
    assert len([line for line in text if "REFUSED" in line]) == printed["n_refused"]
    assert text[-1].startswith(f"filtered {len(entries)} input(s): {printed['n_refused']} "
                               "refused")
    # what the threshold promises, from the file
    assert printed["target_fpr"] == 0.05 and printed["fpr_confidence"] == 0.8
    assert "fitted for a 5.0% false-positive rate (held with 80% confidence)" in text[-1]


@pytest.mark.parametrize("data", ["unlabelled.npz", "one_array.npz"])
def test_inputs_without_labels_are_filtered_with_a_null_label(
        files: dict, saved: Path, data: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(filter_args(files, saved, "--format", "json")) == cli.EXIT_CLEAN
    labelled = json.loads(capsys.readouterr().out)
    code = cli.run(filter_args(files, saved, "--format", "json", data=data))
    captured = capsys.readouterr()
    assert code == cli.EXIT_CLEAN, captured.err
    document = json.loads(captured.out)
    assert [e["label"] for e in document["inputs"]] == [None] * len(files["inputs_x"])
    without = [{k: v for k, v in e.items() if k != "label"} for e in document["inputs"]]
    assert without == [{k: v for k, v in e.items() if k != "label"}
                       for e in labelled["inputs"]]  # the same decisions, scores, predictions
    assert document["n_refused"] == labelled["n_refused"] > 0
    # the text form has no label column
    assert cli.run(filter_args(files, saved, data=data)) == cli.EXIT_CLEAN
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["input", "decision", "score", "prediction"]
    assert all(len(line.split()) == 4 for line in lines[1:len(files["inputs_x"]) + 1])


def test_a_label_key_that_is_named_must_exist(files: dict, saved: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = filter_args(files, saved, "--y-key", "labels", data="unlabelled.npz")
    assert cli.run(args) == cli.EXIT_USAGE
    message = one_line_error(capsys)
    assert "no key 'labels' (--y-key)" in message and "images" in message


@pytest.mark.parametrize("command", ["scan", "mitigate"])
def test_scan_and_mitigate_still_need_labels(files: dict, tmp_path: Path, command: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    args = mitigate_args(files, tmp_path / "out")
    if command == "scan":
        args = ["scan", str(path(files, "model.pt")), "--data", "DATA", "--out",
                str(tmp_path / "out"), "--no-progress", *ARCH]
    args[args.index("--data") + 1] = str(path(files, "unlabelled.npz"))
    assert cli.run(args) == cli.EXIT_USAGE
    message = one_line_error(capsys)
    assert "cannot tell which key of unlabelled.npz holds the labels (keys: images); give " \
           "--y-key" in message


def test_mitigate_writes_filter_json_into_out_by_default(files: dict, tmp_path: Path) -> None:
    assert cli.run(mitigate_args(files, tmp_path)) == cli.EXIT_CLEAN
    assert json.loads((tmp_path / "filter.json").read_text())["format"] == \
        "neuralcleanse-input-filter"
    assert not list(tmp_path.glob("repaired_*"))


@pytest.mark.parametrize(("save", "expected"), [
    ("filter.pt", "give a name ending in .json"),
    ("report.json", "a file this command writes into the output folder"),
])
def test_mitigate_refuses_a_save_path_that_makes_no_sense(
        files: dict, tmp_path: Path, save: str, expected: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run(mitigate_args(files, tmp_path, "--save", str(tmp_path / save)))
    assert code == cli.EXIT_USAGE
    assert expected in one_line_error(capsys)


def test_an_existing_filter_file_is_kept_unless_asked(files: dict, saved: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    target = tmp_path / "mine.json"
    target.write_text("someone's file")
    args = mitigate_args(files, tmp_path / "out", "--save", str(target))
    assert cli.run(args) == cli.EXIT_USAGE
    assert "--overwrite-model" in one_line_error(capsys)
    assert target.read_text() == "someone's file"
    assert cli.run([*args, "--overwrite-model"]) == cli.EXIT_CLEAN
    assert json.loads(target.read_text())["threshold"] == json.loads(saved.read_text())[
        "threshold"]


# -- refusals ----------------------------------------------------------------------------------
def test_another_model_file_is_refused_unless_asked(files: dict, saved: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    args = filter_args(files, saved, model="other.pt")
    assert cli.run(args) == cli.EXIT_USAGE
    message = one_line_error(capsys)
    assert "SHA-256" in message and "--ignore-sha256" in message
    assert "ignore_sha256" not in message
    assert cli.run([*args, "--ignore-sha256"]) == cli.EXIT_CLEAN
    assert "using the filter anyway" in capsys.readouterr().err


def test_a_model_with_another_number_of_classes_is_refused(files: dict, saved: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    args = filter_args(files, saved, "--ignore-sha256", model="five.pt",
                       arch_kwargs={"image_size": 8, "width": WIDTH, "nb_classes": 5})
    assert cli.run(args) == cli.EXIT_USAGE
    message = one_line_error(capsys)
    assert "10 outputs (classes), but this model has 5" in message


def test_flags_that_contradict_the_filter_are_refused_in_flag_words(
        files: dict, saved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flags, expected in ((["--clip-values", "0,2"], "--clip-values 0,1, but --clip-values 0,2"),
                            (["--subtract", "0.5"], "--subtract/--divide"),
                            (["--output", "probabilities"], "whose --output is 'logits'")):
        assert cli.run(filter_args(files, saved, *flags)) == cli.EXIT_USAGE
        message = one_line_error(capsys)
        assert expected in message and "=" not in message.split("error: ", 1)[1], message


def change(text: str, *keys: Any, value: Any) -> str:
    doc = json.loads(text)
    target = doc
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return json.dumps(doc)


def raw(text: str, field: str, token: str) -> str:
    return change(text, field, value="@@").replace('"@@"', token)


BROKEN = {
    "wrong type": (lambda t: change(t, "threshold", value="high"), "field 'threshold'"),
    "huge number": (lambda t: raw(t, "threshold", "1e999"), "field 'threshold'"),
    "NaN": (lambda t: raw(t, "threshold", "NaN"), "holds NaN"),
    "neuron out of range": (lambda t: change(t, "labels", 0, "neurons", value=[10**6]),
                            "field 'labels[0].neurons' holds 1000000"),
    "truncated": (lambda t: t[:200], "is not valid JSON"),
    "reduce payload": (lambda t: change(t, "__reduce__", value=["os.system", ["id"]]),
                       "unknown field(s) '__reduce__'"),
    "a pickle": (lambda t: b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os", "not UTF-8"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_filter_files_exit_2_before_the_model_is_loaded(
        files: dict, saved: Path, tmp_path: Path, name: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    build, expected = BROKEN[name]
    broken = tmp_path / "filter.json"
    content = build(saved.read_text())
    broken.write_bytes(content if isinstance(content, bytes) else content.encode())

    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cmd_filter, "load_inputs", no_loading)
    assert cli.run(filter_args(files, broken)) == cli.EXIT_USAGE
    message = one_line_error(capsys)
    assert expected in message and str(broken) in message


def test_a_huge_file_and_an_unknown_layer_exit_2(files: dict, saved: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    huge = tmp_path / "huge.json"
    with huge.open("wb") as handle:  # 100 MB, sparse
        handle.truncate(100 * 2**20)
    assert cli.run(filter_args(files, huge)) == cli.EXIT_USAGE
    assert "larger than 32 MiB" in one_line_error(capsys)
    layer = tmp_path / "layer.json"
    layer.write_text(change(saved.read_text(), "layer", value="no_such_layer"))
    assert cli.run(filter_args(files, layer)) == cli.EXIT_USAGE
    assert "unknown layer 'no_such_layer'" in one_line_error(capsys)


def test_out_may_not_replace_an_input(files: dict, saved: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    for target in (saved, path(files, "model.pt")):
        before = target.read_bytes()
        assert cli.run(filter_args(files, saved, "--out", str(target))) == cli.EXIT_USAGE
        assert "is one of the inputs" in one_line_error(capsys)
        assert target.read_bytes() == before


def test_filter_help_lists_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["filter", "--help"]) == cli.EXIT_CLEAN
    text = capsys.readouterr().out
    for flag in ("--filter", "--data", "--out", "--ignore-sha256", "--format", "--arch",
                 "--clip-values", "--x-key"):
        assert flag in text
