"""End-to-end tests of the ``neuralcleanse`` command line on small models saved to files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from neuralcleanse.backends import wrap_model
from neuralcleanse.backends.loading import load_model
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.frontends import cli, demo
from neuralcleanse.frontends.cli.messages import to_flags
from neuralcleanse.io.data_files import balanced_subsample, load_data
from neuralcleanse.io.json_schemas import load_schema

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCH = ["--arch", "neuralcleanse.backends.torch.architectures:small_cnn", "--arch-kwargs",
        '{"image_size": 16}']
#: A short search that still separates the planted label from the others on these models.
SEARCH = ["--steps", "60", "--mini-batches", "4", "--early-stop-patience", "10"]
#: A very short search for tests about loading and plumbing, not about detection.
QUICK = ["--labels", "6,7", "--steps", "3", "--mini-batches", "1", "--no-early-stop"]




@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's backdoored model, a clean twin, and clean digits, saved as files."""
    root = tmp_path_factory.mktemp("cli")
    data = demo.load_digits_splits(0)
    backdoored = demo.train_backdoored_model(data, seed=0)
    clean = demo.train_backdoored_model(data, seed=0, poison_fraction=0.0)
    out = {"root": root, "backdoored": root / "backdoored.pt", "clean": root / "clean.pt",
           "data": root / "clean_digits.npz"}
    torch.save(backdoored.state_dict(), out["backdoored"])
    torch.save(clean.state_dict(), out["clean"])
    np.savez(out["data"], x=data.x_clean, y=data.y_clean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's own notice
        torch.jit.script(backdoored).save(str(root / "scripted.pt"))
    program = torch.export.export(backdoored, (torch.from_numpy(data.x_clean[:4]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, root / "exported.pt2")
    torch.save(backdoored, root / "pickled.pt")
    out.update(scripted=root / "scripted.pt", exported=root / "exported.pt2",
               pickled=root / "pickled.pt")
    return out


def scan_args(model: Path, data: Path, out: Path, *extra: str, arch: bool = True) -> list[str]:
    return ["scan", str(model), "--data", str(data), "--out", str(out),
            *(ARCH if arch else []), *extra]


def report_of(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def norms(report: dict) -> np.ndarray:
    return np.array([entry["norm"] for entry in report["labels"]])


@pytest.fixture(scope="module")
def reference(files: dict[str, Path]) -> dict:
    """An uninterrupted scan of the backdoored model."""
    out = files["root"] / "reference"
    code = cli.run(scan_args(files["backdoored"], files["data"], out, *SEARCH))
    return {"code": code, "out": out, "report": report_of(out)}


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("neuralcleanse: error: ")
    assert "Traceback" not in err
    return lines[0]


# -- scan --------------------------------------------------------------------------------------
def test_scan_flags_the_backdoor_and_exits_1(reference: dict, files: dict[str, Path]) -> None:
    assert reference["code"] == cli.EXIT_FLAGGED
    report = reference["report"]
    assert report["flagged_labels"] == [demo.TARGET_LABEL]
    assert report["partial"] is False
    assert [entry["label"] for entry in report["labels"]] == list(range(10))
    out = reference["out"]
    assert (out / "report.html").is_file()
    assert (out / "triggers" / f"label_{demo.TARGET_LABEL}_trigger.png").is_file()
    assert not (out / "partial").exists()  # label-by-label files are gone once complete
    info = report["model_info"]
    assert info["format"] == "state_dict" and info["arch"] == ARCH[1]
    assert info["channels_first"] is True and info["input_shape"] == [1, 16, 16]
    assert info["clip_values"] == [0.0, 1.0] and info["output"] == "logits"
    assert info["output_source"] == "detected from the model's outputs"
    assert report["data_info"]["n_images"] == 359
    assert report["data_info"]["x_key"] == "x" and report["data_info"]["y_key"] == "y"
    assert report["config"]["steps"] == 60 and report["config"]["mini_batches"] == 4
    html = (out / "report.html").read_text()
    assert f"Backdoor: label {demo.TARGET_LABEL}" in html
    assert report["verdict"] == "backdoor" and report["confirmation"]["rule"] == "confirmed"


def test_stamped_example_per_flagged_label_holds_the_models_prediction(
        reference: dict, files: dict[str, Path]) -> None:
    report = reference["report"]
    examples = report["data_info"]["stamped_examples"]
    assert report["flagged_labels"] == [demo.TARGET_LABEL]
    assert [(e["label"], e["kind"]) for e in examples] == \
        [(t, "flagged") for t in report["flagged_labels"]] + \
        [(t, "suspicious") for t in report["suspicious_labels"]]
    clf = wrap_model(load_model(files["backdoored"], arch=ARCH[1],
                                arch_kwargs={"image_size": 16}).model, input_shape=(1, 16, 16))
    data = np.load(files["data"])
    entry = examples[0]
    source = int(np.flatnonzero(data["y"] != demo.TARGET_LABEL)[0])
    assert entry["source_label"] == int(data["y"][source]) != demo.TARGET_LABEL
    np.testing.assert_allclose(entry["clean_image"], data["x"][source], atol=1e-6)
    trigger = report["labels"][demo.TARGET_LABEL]
    mask = np.reshape(trigger["mask"], trigger["mask_shape"])
    pattern = np.reshape(trigger["pattern"], trigger["pattern_shape"])
    expected = (1 - mask) * data["x"][source] + mask * pattern  # the stamp, written out
    np.testing.assert_allclose(entry["image"], expected, atol=1e-5)
    stored = np.asarray([entry["clean_image"], entry["image"]], np.float32)
    predicted = clf.predict(stored).argmax(1)
    assert entry["clean_prediction"] == predicted[0] and entry["prediction"] == predicted[1]
    assert entry["prediction"] == demo.TARGET_LABEL  # the reversed trigger works on it
    html = (reference["out"] / "report.html").read_text()
    assert f'id="example-{demo.TARGET_LABEL}"' in html
    assert f"predicted <b>{predicted[0]}</b> → <b>{predicted[1]}</b>" in html
    jsonschema.validate(report, load_schema("report"))
    # the command line's examples are the library's, on the same model and data
    from neuralcleanse.core.results import ScanResult
    from neuralcleanse.frontends.api import prepare
    from neuralcleanse.mitigation.examples import stamped_examples

    model, images, targets = prepare(clf.model, data["x"], data["y"])
    library = stamped_examples(model, images, targets,
                               ScanResult.from_json(reference["out"] / "report.json"))
    assert json.loads(json.dumps(library)) == examples


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def test_known_trigger_is_stored_and_shown_beside_its_label(files: dict[str, Path],
                                                            tmp_path: Path) -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[12:15, 12:15] = 255
    pattern = np.full((16, 16), 128, np.uint8)
    mask_png, pattern_png = _png(tmp_path / "m.png", mask), _png(tmp_path / "p.png", pattern)
    out = tmp_path / "out"
    code = cli.run(scan_args(files["backdoored"], files["data"], out, *QUICK,
                             "--known-trigger", f"{mask_png},{pattern_png}",
                             "--known-target", "7"))
    assert code in (cli.EXIT_CLEAN, cli.EXIT_FLAGGED)
    report = report_of(out)
    known = report["model_info"]["known_trigger"]
    assert known["label"] == 7 and known["files"] == [str(mask_png), str(pattern_png)]
    np.testing.assert_allclose(np.reshape(known["mask"], known["mask_shape"]), mask / 255)
    assert known["pattern_shape"] == [1, 16, 16]
    np.testing.assert_allclose(known["pattern"], 128 / 255, atol=1e-6)  # range [0, 1]
    html = (out / "report.html").read_text()
    start = html.index('id="flagged-7"')
    card = html[start:html.index('<div class="card', start)]  # label 7's card, to the next
    assert 'id="known-7"' in card and "known trigger" in card
    known_div = card[card.index('id="known-7"'):]
    assert known_div[:known_div.index("</div>")].count("data:image/png;base64,") == 3
    assert 'id="known-6"' not in html
    assert (out / "triggers" / "known_trigger.png").is_file()
    jsonschema.validate(report, load_schema("report"))
    # without a pattern file the pattern is white (the top of the value range)
    out2 = tmp_path / "out2"
    cli.run(scan_args(files["backdoored"], files["data"], out2, *QUICK,
                      "--known-trigger", str(mask_png)))
    known2 = report_of(out2)["model_info"]["known_trigger"]
    assert known2["label"] is None and set(known2["pattern"]) == {1.0}


@pytest.mark.parametrize("kind, expected", [
    ("wrong size", "is 8x8 pixels but the model's images are 16x16"),
    ("not an image", "is not an image"),
    ("missing", "does not exist"),
    ("target", "--known-target 12 is outside"),
])
def test_bad_known_trigger_is_a_one_line_error_before_the_scan(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        kind: str, expected: str) -> None:
    good = _png(tmp_path / "good.png", np.zeros((16, 16)))
    extra = ["--known-trigger", str(good)]
    if kind == "wrong size":
        extra = ["--known-trigger", f"{good},{_png(tmp_path / 'small.png', np.zeros((8, 8)))}"]
    elif kind == "not an image":
        (tmp_path / "fake.png").write_bytes(b"not a png at all")
        extra = ["--known-trigger", str(tmp_path / "fake.png")]
    elif kind == "missing":
        extra = ["--known-trigger", str(tmp_path / "absent.png")]
    else:
        extra += ["--known-target", "12"]
    out = tmp_path / "out"
    assert cli.run(scan_args(files["backdoored"], files["data"], out, *QUICK, *extra)) == \
        cli.EXIT_USAGE
    assert expected in one_line_error(capsys)
    assert not (out / "report.json").exists() and not (out / "partial").exists()


def test_scan_of_the_clean_twin_exits_0(files: dict[str, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = files["root"] / "clean_scan"
    code = cli.run(scan_args(files["clean"], files["data"], out, *SEARCH))
    printed = capsys.readouterr().out
    assert code == cli.EXIT_CLEAN
    assert report_of(out)["flagged_labels"] == []
    assert "no backdoor found" in printed and f"report: {out / 'report.html'}" in printed


def test_summary_table_is_printed(files: dict[str, Path], reference: dict,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = files["root"] / "table"
    code = cli.run(scan_args(files["backdoored"], files["data"], out, *QUICK))
    printed = capsys.readouterr().out
    assert code in (cli.EXIT_CLEAN, cli.EXIT_FLAGGED)
    rows = [line for line in printed.splitlines() if line.strip().startswith(("│", "|"))]
    assert len(rows) == 2  # one row per scanned label
    assert "anomaly index" in printed and "report:" in printed


@pytest.mark.parametrize("kind", ["scripted", "exported", "pickled"])
def test_model_formats_give_the_state_dict_result(files: dict[str, Path], kind: str) -> None:
    base = files["root"] / "formats_state_dict"
    if not (base / "report.json").is_file():
        cli.run(scan_args(files["backdoored"], files["data"], base, *QUICK))
    out = files["root"] / f"formats_{kind}"
    extra = ["--trust-pickle"] if kind == "pickled" else []
    code = cli.run(scan_args(files[kind], files["data"], out, *QUICK, *extra, arch=False))
    assert code in (cli.EXIT_CLEAN, cli.EXIT_FLAGGED)
    report = report_of(out)
    expected = {"scripted": "torchscript", "exported": "torch.export", "pickled": "pickle"}
    assert report["model_info"]["format"] == expected[kind]
    np.testing.assert_allclose(norms(report), norms(report_of(base)), rtol=1e-5)


def test_pickled_module_needs_the_explicit_flag(files: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run(scan_args(files["pickled"], files["data"], files["root"] / "p", *QUICK,
                             arch=False))
    assert code == cli.EXIT_USAGE
    assert "--trust-pickle" in one_line_error(capsys)
    help_text = _help_of("scan")
    assert "RUNS CODE" in help_text


def _help_of(command: str) -> str:
    import typer

    group = typer.main.get_command(cli.app)
    sub = group.commands[command]
    return " ".join(p.help or "" for p in sub.params)


def test_every_scan_setting_is_a_flag_and_help_works(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    import typer

    scan_command = typer.main.get_command(cli.app).commands["scan"]
    flags = {opt for p in scan_command.params for opt in [*p.opts, *p.secondary_opts]}
    for name in ScanConfig.field_names():
        assert "--" + name.replace("_", "-") in flags, name
    assert {"--config", "--resume", "--max-samples", "--input-shape", "--clip-values",
            "--subtract", "--divide", "--output", "--channels-first"} <= flags
    for command in ([], ["scan"], ["mitigate"], ["report"], ["demo"]):
        assert cli.run([*command, "--help"]) == 0
        assert "Usage" in capsys.readouterr().out
    assert cli.run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"neuralcleanse {cli.__version__}"


def test_config_files_json_and_toml(files: dict[str, Path], tmp_path: Path) -> None:
    as_json = tmp_path / "settings.json"
    as_json.write_text(json.dumps({"steps": 2, "mini_batches": 1, "seed": 5,
                                   "early-stop": False, "anomaly_threshold": 3.0}))
    out = tmp_path / "json"
    cli.run(scan_args(files["backdoored"], files["data"], out, "--labels", "7",
                      "--config", str(as_json), "--seed", "7"))
    config = report_of(out)["config"]
    assert config["steps"] == 2 and config["mini_batches"] == 1
    assert config["early_stop"] is False and config["anomaly_threshold"] == 3.0
    assert config["seed"] == 7  # the command line wins over the file

    as_toml = tmp_path / "settings.toml"
    as_toml.write_text('[scan]\nsteps = 2\nmini_batches = "all"\nlabel_batch = 2\n'
                       "norm = 2\n")
    out = tmp_path / "toml"
    cli.run(scan_args(files["backdoored"], files["data"], out, "--labels", "6,7",
                      "--config", str(as_toml)))
    config = report_of(out)["config"]
    assert config["steps"] == 2 and config["mini_batches"] is None
    assert config["label_batch"] == 2 and config["norm"] == 2

    out = tmp_path / "art"
    cli.run(scan_args(files["backdoored"], files["data"], out, *QUICK, "--preset", "art"))
    config = report_of(out)["config"]
    assert config["norm"] == 2 and config["cost_multiplier"] == 1.5
    assert config["steps"] == 3  # flags still apply on top of the preset

    out = tmp_path / "fast"
    cli.run(scan_args(files["backdoored"], files["data"], out, *QUICK, "--preset", "fast"))
    config = report_of(out)["config"]
    assert config["mini_batches"] == 1  # the flag wins over the preset's 8
    assert config["early_stop_patience"] == ScanConfig.fast().early_stop_patience == 10
    assert config["norm"] == 1 and config["cost_multiplier"] == 2


def test_restarts_flag_reports_verdict_stability(files: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "restarts"
    cli.run(scan_args(files["backdoored"], files["data"], out, *QUICK, "--restarts", "2"))
    report = report_of(out)
    info = report["restarts"]
    assert info["n"] == 2 and info["seeds"] == [0, 1] and info["labels"] == [6, 7]
    assert np.allclose(norms(report), np.median(info["norms"], axis=0), rtol=1e-5)
    # the other restart of each flagged or suspicious label is written for unlearning
    mitigable = set(report["flagged_labels"]) | set(report["suspicious_labels"])
    assert sorted(r["label"] for r in report["further_triggers"]) == sorted(mitigable)
    html = (out / "report.html").read_text()
    assert "flagged in runs" in html and "seeds 0, 1" in html
    printed = capsys.readouterr().out
    assert any(f"{k}/2" in printed for k in (0, 1, 2)), printed  # "flagged in k/N runs" column
    code = cli.run(scan_args(files["backdoored"], files["data"], out, *QUICK, "--restarts", "2",
                             "--resume"))
    assert code == cli.EXIT_USAGE
    assert "--resume" in one_line_error(capsys)
    code = cli.run(scan_args(files["backdoored"], files["data"], out, *QUICK, "--restarts", "0"))
    assert code == cli.EXIT_USAGE


def test_bad_config_file_is_a_one_line_error(files: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = 2\nstepz = 3\n")
    code = cli.run(scan_args(files["backdoored"], files["data"], tmp_path / "o",
                             "--config", str(bad)))
    assert code == cli.EXIT_USAGE
    assert "stepz" in one_line_error(capsys)
    broken = tmp_path / "broken.json"
    broken.write_text("{steps: 2")
    code = cli.run(scan_args(files["backdoored"], files["data"], tmp_path / "o",
                             "--config", str(broken)))
    assert code == cli.EXIT_USAGE
    assert "not valid JSON" in one_line_error(capsys)


@pytest.mark.parametrize("args, expected", [
    (["scan", "missing.pt", "--data", "{data}"], "does not exist"),
    (["scan", "{model}", "--data", "missing.npz"], "does not exist"),
    (["scan", "{model}", "--data", "{data}", "--steps", "many"], "--steps"),
    (["scan", "{model}", "--data", "{data}", "--no-such-flag"], "--no-such-flag"),
    (["scan", "{model}", "--data", "{data}", "--norm", "3", *ARCH], "norm"),
    (["scan", "{model}", "--data", "{data}", "--steps", "0", *ARCH], "steps"),
    (["scan", "{model}", "--data", "{data}"], "--arch"),
    (["scan", "{model}", "--data", "{data}", "--arch", "no_such_module:f"], "no_such_module"),
    (["scan", "{model}", "--data", "{data}", "--arch",
      "neuralcleanse.backends.torch.architectures:mnist_badnet"], "do not fit"),
    (["scan", "{model}", "--data", "{keyless}", *ARCH], "--x-key"),
    (["scan", "{model}", "--data", "{data}", "--x-key", "images", *ARCH], "images"),
    (["scan", "{model}", "--data", "{small}", *ARCH], "shape"),
    (["scan", "{model}", "--data", "{data}", "--input-shape", "1,8,8", *ARCH], "1, 8, 8"),
    (["scan", "{model}", "--data", "{data}", "--clip-values", "1,0", *ARCH], "MIN < MAX"),
    (["scan", "{model}", "--data", "{data}", "--subtract", "0.1,0.2,0.3", *ARCH], "channel"),
    (["scan", "{model}", "--data", "{data}", "--labels", "12", *ARCH], "labels"),
    (["scan", "{model}", "--data", "{data}", "--output", "scores", *ARCH], "--output"),
    (["report", "missing_folder"], "does not exist"),
    (["mitigate", "{model}", "--data", "{data}", "--report", "missing", *ARCH], "no scan report"),
])
def test_bad_paths_and_flags_give_one_line_errors(
        files: dict[str, Path], capsys: pytest.CaptureFixture[str], args: list[str],
        expected: str) -> None:
    root = files["root"]
    keyless, small = root / "keyless.npz", root / "small.npz"
    if not keyless.is_file():
        x = np.load(files["data"])["x"]
        np.savez(keyless, a=x, b=np.zeros(len(x)))
        np.savez(small, x=x[:, :, ::2, ::2], y=np.load(files["data"])["y"])
    values = {"model": str(files["backdoored"]), "data": str(files["data"]),
              "keyless": str(keyless), "small": str(small)}
    argv = [values.get(a.strip("{}"), a) if a.startswith("{") else a for a in args]
    if args[0] == "scan":
        argv += ["--out", str(root / "bad")]
    assert cli.run(argv) == cli.EXIT_USAGE
    assert expected in one_line_error(capsys)


def test_console_script_errors_without_traceback(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "neuralcleanse.frontends.cli", "scan",
                          str(tmp_path / "none.keras"), "--data", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "Traceback" not in run.stderr
    assert "does not exist" in run.stderr


# -- data loading ------------------------------------------------------------------------------
def test_balanced_subsample_is_seeded_and_balanced() -> None:
    y = np.array([0] * 5 + [1] * 100 + [2] * 100)
    picked = balanced_subsample(y, 61, seed=3)
    counts = np.bincount(y[picked], minlength=3)
    assert counts.sum() == 61 and counts[0] == 5  # the small class gives all it has
    assert abs(int(counts[1]) - int(counts[2])) <= 1
    assert np.array_equal(picked, balanced_subsample(y, 61, seed=3))
    assert not np.array_equal(picked, balanced_subsample(y, 61, seed=4))
    assert len(np.unique(picked)) == 61
    with pytest.raises(ValueError, match="max_samples"):
        balanced_subsample(y, 0, seed=0)


def test_image_folder_with_max_samples(files: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    archive = np.load(files["data"])
    x, y = archive["x"], archive["y"]
    folder = tmp_path / "images"
    for i, (image, label) in enumerate(zip(x, y)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8), mode="L").save(
            folder / str(label) / f"{i}.png")
    out = tmp_path / "out"
    code = cli.run(scan_args(files["backdoored"], folder, out, "--labels", "7", "--steps", "2",
                             "--mini-batches", "1", "--max-samples", "100", "--divide", "255"))
    assert code in (cli.EXIT_CLEAN, cli.EXIT_FLAGGED)
    report = report_of(out)
    assert report["data_info"]["format"] == "image folder"
    assert report["data_info"]["n_images"] == 100
    assert report["data_info"]["class_counts"] == [10] * 10
    assert report["data_info"]["subsample"] == {"max_samples": 100, "seed": 0, "of": len(x)}
    assert report["model_info"]["clip_values"] == [0.0, 255.0]
    assert np.allclose(report["model_info"]["preprocessing"][1], 255.0)


def test_image_folder_with_named_classes_and_resizing(tmp_path: Path) -> None:
    from PIL import Image

    for name, size, colour in (("cat", (10, 12), (255, 0, 0)), ("dog", (20, 20), (0, 0, 255))):
        (tmp_path / name).mkdir()
        Image.new("RGB", size, colour).save(tmp_path / name / "a.png")
    with pytest.raises(ValueError) as refused:
        load_data(tmp_path)
    assert "--input-shape" in to_flags(str(refused.value))  # as the command line prints it
    loaded = load_data(tmp_path, image_size=(8, 8))
    assert loaded.x.shape == (2, 8, 8, 3) and loaded.y.tolist() == [0, 1]
    assert loaded.info["class_names"] == ["cat", "dog"]
    assert tuple(loaded.x[0, 0, 0]) == (255, 0, 0)


# -- resuming ----------------------------------------------------------------------------------
def test_resume_after_interruption_gives_the_uninterrupted_result(
        files: dict[str, Path], reference: dict, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = files["root"] / "resumed"
    saved: list[int] = []
    original = cli.PartialStore.save

    def save_then_interrupt(store: cli.PartialStore, result: object) -> None:
        original(store, result)
        saved.append(result.label)
        if len(saved) == 4:
            raise KeyboardInterrupt  # Ctrl-C after the fourth finished label

    monkeypatch.setattr(cli.PartialStore, "save", save_then_interrupt)
    code = cli.run(scan_args(files["backdoored"], files["data"], out, *SEARCH))
    assert code == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "4 of 10 labels done" in err and "--resume" in err
    partial = report_of(out)
    assert partial["partial"] is True and len(partial["labels"]) == 4
    assert "Partial scan" in (out / "report.html").read_text()
    assert len(list((out / "partial").glob("label_*.json"))) == 4

    monkeypatch.setattr(cli.PartialStore, "save", original)
    resumed_labels: list[int] = []

    def count(store: cli.PartialStore, result: object) -> None:
        resumed_labels.append(result.label)
        original(store, result)

    monkeypatch.setattr(cli.PartialStore, "save", count)
    code = cli.run(scan_args(files["backdoored"], files["data"], out, *SEARCH, "--resume"))
    assert code == reference["code"] == cli.EXIT_FLAGGED
    assert sorted(resumed_labels) == sorted(set(range(10)) - set(saved))  # only the rest ran
    final = report_of(out)
    assert final["partial"] is False
    assert final["flagged_labels"] == reference["report"]["flagged_labels"]
    np.testing.assert_allclose(norms(final), norms(reference["report"]), rtol=1e-6)
    for got, want in zip(final["labels"], reference["report"]["labels"]):
        assert got["steps"] == want["steps"]
        assert got["anomaly_index"] == pytest.approx(want["anomaly_index"], rel=1e-5)
    assert "Partial scan" not in (out / "report.html").read_text()


def test_resume_refuses_results_of_other_settings(files: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    original = cli.PartialStore.save

    def save_then_interrupt(store: cli.PartialStore, result: object) -> None:
        original(store, result)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.PartialStore, "save", save_then_interrupt)
    out = tmp_path / "out"
    assert cli.run(scan_args(files["backdoored"], files["data"], out, *QUICK)) == 130
    monkeypatch.setattr(cli.PartialStore, "save", original)
    capsys.readouterr()
    code = cli.run(scan_args(files["backdoored"], files["data"], out, *QUICK, "--seed", "1",
                             "--resume"))
    assert code == cli.EXIT_USAGE
    assert "another model, data or settings" in one_line_error(capsys)


def test_resume_mid_search_from_the_checkpoint_gives_the_uninterrupted_result(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--labels", "5,6,7", "--steps", "6", "--mini-batches", "1", "--no-early-stop",
            "--label-batch", "2", "--checkpoint-every", "0"]
    reference_out = tmp_path / "reference"
    reference_code = cli.run(scan_args(files["backdoored"], files["data"], reference_out, *args))
    assert reference_code in (cli.EXIT_CLEAN, cli.EXIT_FLAGGED)
    original = cli.PartialStore.save_checkpoint
    calls = {"n": 0}

    def save_then_interrupt(store: cli.PartialStore, state: dict) -> None:
        original(store, state)
        calls["n"] += 1
        if calls["n"] == 3:  # mid-search: labels 5 and 6 are stacked, 7 waits
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.PartialStore, "save_checkpoint", save_then_interrupt)
    out = tmp_path / "out"
    assert cli.run(scan_args(files["backdoored"], files["data"], out, *args)) == 130
    checkpoint = cli.PartialStore(out / "partial", "unused").checkpoint_path
    assert checkpoint.is_file()
    monkeypatch.setattr(cli.PartialStore, "save_checkpoint", original)
    capsys.readouterr()
    code = cli.run(scan_args(files["backdoored"], files["data"], out, *args, "--resume"))
    assert "mid-way" in capsys.readouterr().out
    assert code == reference_code
    resumed, reference = report_of(out), report_of(reference_out)
    assert np.array_equal(norms(resumed), norms(reference))
    for a, b in zip(resumed["labels"], reference["labels"]):
        assert a["label"] == b["label"] and a["steps"] == b["steps"]
        assert np.array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))
    assert not checkpoint.exists()  # a finished scan removes its own checkpoint


def test_ctrl_c_in_a_real_process_leaves_a_partial_report(files: dict[str, Path],
                                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # A test run started as a background job of a shell without job control (e.g. under
    # nohup in a script) ignores SIGINT, and the child would inherit that; a user pressing
    # Ctrl-C has it at its default, so give the child the default.
    process = subprocess.Popen(
        [sys.executable, "-m", "neuralcleanse.frontends.cli",
         *scan_args(files["backdoored"], files["data"], out, *SEARCH, "--label-batch", "1")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list((out / "partial").glob("label_*.json")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == cli.EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "--resume" in err
    report = report_of(out)
    assert report["partial"] is True and 1 <= len(report["labels"]) < 10


# -- mitigate, report, demo --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["unlearning", "pruning", "filtering"])
def test_mitigate_command(files: dict[str, Path], reference: dict, tmp_path: Path,
                          method: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / method
    code = cli.run(["mitigate", str(files["backdoored"]), "--data", str(files["data"]),
                    "--report", str(reference["out"]), "--method", method, "--out", str(out),
                    *ARCH])
    printed = capsys.readouterr().out
    assert code == cli.EXIT_CLEAN
    result = json.loads((out / "mitigation.json").read_text())
    assert result["method"] == method and result["labels"] == [demo.TARGET_LABEL]
    measured = result["report"]["measurements"]
    label = str(demo.TARGET_LABEL)
    assert measured["reversed_asr_after"][label] < measured["reversed_asr_before"][label]
    assert 0.0 <= measured["label_acc_after"][label] <= 1.0
    html = (out / "report.html").read_text()
    assert f"Mitigation: {method} of label {demo.TARGET_LABEL}" in html
    assert f"accuracy on label {label}&#39;s own clean images" in html
    if method == "pruning":
        assert 'class="label-acc"' in html
    assert "report:" in printed
    # the scan's stamped example of the label, after the mitigation, in mitigation.json ...
    example = reference["report"]["data_info"]["stamped_examples"][0]
    after = {e["label"]: e for e in result["stamped_examples"]}[demo.TARGET_LABEL]
    assert (after["method"], after["mitigated"]) == (method, True)
    line = re.findall(rf'id="example-after-{label}">(.*?)</p>', html)
    assert len(line) == 1 and line[0].startswith(f"after {method} of label {label}: ")
    if method == "filtering":  # ... the filter's decision, also on the page
        assert isinstance(after["refused"], bool)
        assert (after["prediction"] is None) is after["refused"]
        assert f"stamped <b>{'refused' if after['refused'] else 'accepted'}" in line[0]
    else:  # ... or the repaired model's prediction, as the saved model gives it
        assert after["refused"] is False
        stamped = torch.tensor([example["clean_image"], example["image"]])
        with torch.no_grad():
            expected = repaired_model(out / f"repaired_{method}.pt")(stamped).argmax(1)
        assert [after["clean_prediction"], after["prediction"]] == expected.tolist()
        assert line[0].endswith(f"predicted <b>{expected[0]}</b> → <b>{expected[1]}</b>")
    saved = out / f"repaired_{method}.pt"
    if method == "filtering":
        assert not saved.exists()
    else:
        assert result["saved_model"] == str(saved)
        x = torch.from_numpy(np.load(files["data"])["x"][:8])
        assert repaired_model(saved)(x).shape == (8, 10)


def repaired_model(path: Path) -> torch.nn.Module:
    return load_model(path, arch=ARCH[1], arch_kwargs={"image_size": 16}).model.eval()


def test_a_safetensors_model_is_repaired_into_safetensors(files: dict[str, Path],
                                                         reference: dict,
                                                         tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "backdoored.safetensors"
    save_file(torch.load(files["backdoored"], weights_only=True), str(weights))
    out = tmp_path / "out"
    code = cli.run(["mitigate", str(weights), "--data", str(files["data"]), "--report",
                    str(reference["out"]), "--method", "unlearning", "--epochs", "1",
                    "--out", str(out), *ARCH])
    assert code == cli.EXIT_CLEAN
    saved = out / "repaired_unlearning.safetensors"
    assert json.loads((out / "mitigation.json").read_text())["saved_model"] == str(saved)
    state = load_file(str(saved))  # a real safetensors file, not a renamed pickle
    original = torch.load(files["backdoored"], weights_only=True)
    assert set(state) == set(original)
    assert any(not torch.equal(state[k], original[k]) for k in state)  # fine-tuned
    loaded = load_model(saved, arch=ARCH[1], arch_kwargs={"image_size": 16})
    assert loaded.format == "safetensors"


def test_mitigate_unlearning_stamps_the_scans_other_seeds_unless_told_not_to(
        files: dict[str, Path], reference: dict, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    label = demo.TARGET_LABEL
    further = [r for r in reference["report"]["further_triggers"] if r["label"] == label]
    assert len(further) == 2  # the confirmation's two further seeds, less the kept run
    norms = [r["norm"] for r in further]
    found = {}
    for flag in ("--all-seeds", "--kept-trigger-only"):
        out = tmp_path / flag.strip("-")
        code = cli.run(["mitigate", str(files["backdoored"]), "--data", str(files["data"]),
                        "--report", str(reference["out"]), "--method", "unlearning", flag,
                        "--epochs", "1", "--min-updates", "0", "--out", str(out), *ARCH])
        assert code == cli.EXIT_CLEAN
        found[flag] = json.loads((out / "mitigation.json").read_text())["report"]
        found[flag]["printed"] = capsys.readouterr().out
        found[flag]["html"] = (out / "report.html").read_text()
    stamped = found["--all-seeds"]
    assert stamped["further_norms"] == {str(label): pytest.approx(norms)}
    assert f"also stamped the scan's other triggers of label {label}" in stamped["printed"]
    assert "other triggers of the scan stamped too" in stamped["html"]
    kept = found["--kept-trigger-only"]
    assert kept["further_norms"] == {}
    assert "other triggers" not in kept["printed"] and "other triggers" not in kept["html"]
    assert kept["n_stamped"] == stamped["n_stamped"]  # the same share, fewer triggers


def test_mitigate_rounds_search_the_trigger_again_with_the_scans_settings(
        files: dict[str, Path], reference: dict, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = cli.run(["mitigate", str(files["backdoored"]), "--data", str(files["data"]),
                    "--report", str(reference["out"]), "--method", "unlearning", "--rounds", "2",
                    "--epochs", "2", "--min-updates", "0", "--out", str(out), *ARCH])
    printed = capsys.readouterr().out
    assert code == cli.EXIT_CLEAN
    report = json.loads((out / "mitigation.json").read_text())["report"]
    assert report["options"]["rounds"] == 2 and report["epochs"] == 2
    first, second = report["rounds"]
    assert first["norms"] == {} and first["epochs"] == second["epochs"] == 1
    label = str(demo.TARGET_LABEL)
    assert set(second["norms"]) == {label} and second["norms"][label] > 0
    assert 0.0 <= second["success_after"][label] <= 1.0
    assert "in 2 rounds" in printed and f"searched again before round 2: label {label}" in printed
    html = (out / "report.html").read_text()
    assert "in 2 rounds" in html and "trigger searched again before round 2" in html
    assert f"label {label}: norm " in html


def test_mitigate_with_nothing_flagged_is_an_input_error(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scan"
    cli.run(scan_args(files["clean"], files["data"], out, "--labels", "7", "--steps", "2",
                      "--mini-batches", "1"))
    assert report_of(out)["flagged_labels"] == []
    capsys.readouterr()
    code = cli.run(["mitigate", str(files["clean"]), "--data", str(files["data"]),
                    "--report", str(out), *ARCH])
    assert code == cli.EXIT_USAGE
    assert "nothing to mitigate" in one_line_error(capsys)


@pytest.mark.parametrize("kind", ["scripted", "exported"])
def test_scan_only_formats_refuse_mitigation(files: dict[str, Path], reference: dict,
                                            tmp_path: Path, kind: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run(["mitigate", str(files[kind]), "--data", str(files["data"]), "--report",
                    str(reference["out"]), "--out", str(tmp_path)])
    assert code == cli.EXIT_USAGE
    assert "scanned but not mitigated" in one_line_error(capsys)


def test_report_command_rerenders_the_html(reference: dict, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(reference["out"], folder)
    (folder / "report.html").unlink()
    shutil.rmtree(folder / "triggers")
    assert cli.run(["report", str(folder)]) == cli.EXIT_CLEAN
    assert (folder / "report.html").is_file()
    assert len(list((folder / "triggers").glob("*.png"))) == 30
    assert cli.run(["report", str(folder / "report.json")]) == cli.EXIT_CLEAN
    capsys.readouterr()
    assert cli.run(["report", str(tmp_path)]) == cli.EXIT_USAGE
    assert "report.json" in one_line_error(capsys)


def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    started = time.perf_counter()
    assert cli.run(["demo", "--out", str(out)]) == cli.EXIT_CLEAN
    seconds = time.perf_counter() - started
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("report:") and str(out / "report.html") in printed[-1]
    report = report_of(out)
    assert report["flagged_labels"] == [demo.TARGET_LABEL]
    facts = json.loads((out / "demo.json").read_text())
    assert facts["detected"] is True
    assert facts["planted_trigger_attack_success_before"] > 0.9
    assert facts["planted_trigger_attack_success_after_unlearning"] < 0.1
    assert facts["clean_accuracy_after_unlearning"] > 0.9
    assert json.loads((out / "mitigation.json").read_text())["method"] == "unlearning"
    assert (out / "repaired_model.pt").is_file() and (out / "clean_digits.npz").is_file()
    known = report["model_info"]["known_trigger"]
    assert known["label"] == demo.TARGET_LABEL == 7
    mask = np.reshape(known["mask"], known["mask_shape"])
    expected = np.zeros((16, 16))
    expected[12:15, 12:15] = 1.0  # 3x3, one pixel from the bottom-right corner
    np.testing.assert_array_equal(mask, expected)
    assert known["pattern_shape"] == [1, 16, 16] and set(known["pattern"]) == {1.0}
    html = (out / "report.html").read_text()
    assert f'id="known-{demo.TARGET_LABEL}"' in html
    jsonschema.validate(report, load_schema("report"))
    # a stamped example of label 7: the planted model sends it to 7, the repaired one does not
    example = {e["label"]: e for e in report["data_info"]["stamped_examples"]}[7]
    assert example["kind"] == "flagged" and example["prediction"] == 7
    assert example["source_label"] != 7
    after = {e["label"]: e for e in json.loads(
        (out / "mitigation.json").read_text())["stamped_examples"]}[7]
    images = torch.tensor([example["clean_image"], example["image"]])
    with torch.no_grad():
        expected = repaired_model(out / "repaired_model.pt")(images).argmax(1).tolist()
    assert (after["method"], after["refused"]) == ("unlearning", False)
    assert [after["clean_prediction"], after["prediction"]] == expected
    assert after["prediction"] != 7
    line = re.findall(r'id="example-after-7">(.*?)</p>', html)
    assert line == [f"after unlearning of label 7: predicted <b>{expected[0]}</b> → "
                    f"<b>{expected[1]}</b>"]
    print(f"demo took {seconds:.1f} s")


def test_keras_files_are_scanned_channels_last(files: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    keras = pytest.importorskip("keras", reason="Keras is not installed")
    try:
        import neuralcleanse.backends.tensorflow.classifier  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the Keras backend is not available: {exc}")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1))
    hidden = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))
    model.save(tmp_path / "model.keras")
    model.save(tmp_path / "model.h5")
    found = {}
    for name in ("model.keras", "model.h5"):
        out = tmp_path / name.replace(".", "_")
        # the digits are stored channels first (N, 1, 16, 16): they are moved for Keras
        code = cli.run(scan_args(tmp_path / name, files["data"], out, *QUICK, arch=False))
        assert code in (cli.EXIT_CLEAN, cli.EXIT_FLAGGED)
        report = report_of(out)
        found[name] = norms(report)
        info = report["model_info"]
        assert info["format"] in ("keras", "tf_keras") and info["channels_first"] is False
        assert info["input_shape"] == [16, 16, 1]
        assert info["output"] == "probabilities"
        assert report["data_info"]["layout_change"] == "NCHW data moved to NHWC"
    np.testing.assert_allclose(found["model.keras"], found["model.h5"], rtol=1e-5)
    capsys.readouterr()
    code = cli.run(scan_args(tmp_path / "model.keras", files["data"], tmp_path / "o", *QUICK))
    assert code == cli.EXIT_USAGE
    assert "--arch is for PyTorch state dicts" in one_line_error(capsys)
