"""Tests of ``neuralcleanse scan-many``: flags to arguments, exit codes, output, progress.

Most tests replace the engine (``neuralcleanse.frontends.api.scan_many``) with a fake that
records its arguments, writes the models' reports and the summary files as the engine does,
and returns a chosen summary; one test runs the real engine on two tiny models.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from rich.console import Console

from neuralcleanse.core.errors import InputError
from neuralcleanse.core.summary import ModelOutcome, ScanManySummary
from neuralcleanse.frontends import api, cli
from neuralcleanse.frontends.cli.cmd_scan_many import SEARCH_FLAGS, ProgressDisplay
from neuralcleanse.io.summary_files import write_summary


def done(name: str, flagged: list[int] | None = None,
         suspicious: list[int] | None = None) -> ModelOutcome:
    verdict = "backdoor" if flagged else "suspicious" if suspicious else "clean"
    return ModelOutcome(name=name, model=f"zoo/{name}.pt", status="done", verdict=verdict,
                        flagged_labels=flagged or [], suspicious_labels=suspicious or [],
                        max_anomaly_index=3.5 if flagged else 1.0, min_norm=4.0,
                        label_steps=50, wall_seconds=1.5, report=f"models/{name}", attempts=1)


def failed(name: str) -> ModelOutcome:
    return ModelOutcome(name=name, model=f"zoo/{name}.pt", status="failed",
                        error=f"model file 'zoo/{name}.pt' is not a model", attempts=1)


class FakeEngine:
    """Stands in for ``api.scan_many``: records the call, writes what the engine writes."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.models: list[ModelOutcome] = [done("a"), done("b")]
        self.interrupted = False
        self.events: list[Any] = []
        self.raise_after: BaseException | None = None
        self.raise_before: BaseException | None = None

    def __call__(self, manifest: Any, out: Any, **kwargs: Any) -> ScanManySummary:
        self.calls.append({"manifest": manifest, "out": Path(out), **kwargs})
        if self.raise_before is not None:
            raise self.raise_before
        for event in self.events:
            kwargs["on_progress"](event)
        summary = ScanManySummary(models=self.models, settings={"engine": "fake"},
                                  wall_seconds=3.0, interrupted=self.interrupted)
        for m in self.models:
            if m.report:
                (Path(out) / m.report).mkdir(parents=True, exist_ok=True)
                (Path(out) / m.report / "report.html").write_text("<p>report</p>")
        write_summary(summary, out)
        if self.raise_after is not None:
            raise self.raise_after
        return summary

    @property
    def call(self) -> dict[str, Any]:
        assert len(self.calls) == 1
        return self.calls[0]


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    fake = FakeEngine()
    monkeypatch.setattr(api, "scan_many", fake, raising=False)
    return fake


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A manifest file, a folder of (empty) model files and a data file; the fake reads none."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ("a", "b"):
        (zoo / f"{name}.pt").write_bytes(b"")
    manifest = tmp_path / "zoo.toml"
    manifest.write_text('[defaults]\ndata = "val.npz"\n\n[[models]]\nmodel = "zoo/a.pt"\n')
    data = tmp_path / "val.npz"
    data.write_bytes(b"")
    return {"root": tmp_path, "zoo": zoo, "manifest": manifest, "data": data,
            "out": tmp_path / "run"}


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- exit codes ------------------------------------------------------------------------------
def test_clean_run_exits_0_and_prints_the_summary(
        engine: FakeEngine, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"])])
    assert code == 0
    printed = capsys.readouterr().out
    assert "2 model(s): 0 flagged, 0 suspicious, 2 clean, 0 failed" in printed
    assert str(files["out"] / "index.html") in printed
    for name in ("summary.json", "summary.csv", "index.html"):
        assert (files["out"] / name).is_file()
    call = engine.call
    assert call["manifest"] == files["manifest"] and call["out"] == files["out"]
    assert call["config"] is None  # nothing given: the manifest's [search] applies unchanged
    assert (call["address"], call["cpus_per_scan"], call["gpus_per_scan"]) == (None, 1.0, 0.0)
    assert (call["labels_per_task"], call["max_retries"], call["resume"],
            call["parallel"]) == (None, 3, False, None)


def test_a_flagged_model_exits_1(engine: FakeEngine, files: dict[str, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    engine.models = [done("a"), done("evil", flagged=[3]), failed("broken")]
    code = cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"])])
    assert code == 1
    printed = capsys.readouterr().out
    assert "1 flagged, 0 suspicious, 1 clean, 1 failed — flagged: evil" in printed
    assert "failed: broken: model file 'zoo/broken.pt' is not a model" in printed


@pytest.mark.parametrize(("models", "codes"), [
    # --fail-on backdoor (the default), suspicious, never
    ([done("a"), done("b", suspicious=[2])], (0, 1, 0)),
    ([done("a", flagged=[3]), done("b")], (1, 1, 0)),
    ([done("a", suspicious=[2]), failed("broken")], (2, 1, 2)),
    ([done("a", flagged=[3], suspicious=[5]), failed("broken")], (1, 1, 2)),
    ([done("a"), done("b")], (0, 0, 0)),
])
def test_fail_on_chooses_which_verdicts_exit_1(
        engine: FakeEngine, files: dict[str, Path], capsys: pytest.CaptureFixture[str],
        models: list[ModelOutcome], codes: tuple[int, int, int]) -> None:
    """A model that could not be scanned exits 2 unless a verdict that fails exits 1 first."""
    engine.models = models
    base = ["scan-many", str(files["manifest"]), "--out", str(files["out"])]
    assert cli.run(base) == codes[0]
    assert cli.run([*base, "--fail-on", "suspicious"]) == codes[1]
    assert cli.run([*base, "--fail-on", "NEVER"]) == codes[2]
    assert cli.run([*base, "--fail-on", "always"]) == 2  # not a choice
    assert "--fail-on" in capsys.readouterr().err


def test_suspicious_models_are_named_in_the_summary_line(
        engine: FakeEngine, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    engine.models = [done("a"), done("odd", suspicious=[2, 7])]
    assert cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"])]) == 0
    printed = capsys.readouterr().out
    assert "2 model(s): 0 flagged, 1 suspicious, 1 clean, 0 failed — suspicious: odd" in printed
    written = json.loads((files["out"] / "summary.json").read_text())
    assert written["totals"]["suspicious"] == 1
    assert written["models"][1]["suspicious_labels"] == [2, 7]


def test_the_help_documents_the_exit_codes() -> None:
    text = typer.main.get_command(cli.app).commands["scan-many"].help
    for words in ("BACKDOOR", "SUSPICIOUS", "--fail-on suspicious", "--fail-on never",
                  "2 when a model could not be scanned", "130"):
        assert words in " ".join(text.split()), words


def test_a_model_that_could_not_be_scanned_exits_2(
        engine: FakeEngine, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing flagged is not a pass when a model was never scanned."""
    engine.models = [done("a"), failed("broken")]
    code = cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"])])
    assert code == 2
    assert "failed: broken:" in capsys.readouterr().out
    assert json.loads((files["out"] / "summary.json").read_text())["totals"]["failed"] == 1


def test_an_interrupted_run_exits_130(engine: FakeEngine, files: dict[str, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    engine.models = [done("a", flagged=[1])]
    engine.interrupted = True
    code = cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"])])
    assert code == 130  # not 1: the run did not finish
    captured = capsys.readouterr()
    assert "(interrupted)" in captured.out
    assert "--resume" in captured.err and "index.html" in captured.err
    assert json.loads((files["out"] / "summary.json").read_text())["interrupted"] is True


def test_ctrl_c_in_the_engine_exits_130_naming_the_summary(
        engine: FakeEngine, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    engine.interrupted = True
    engine.raise_after = KeyboardInterrupt()
    code = cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"])])
    assert code == 130
    line = one_line_error(capsys)
    assert str(files["out"] / "index.html") in line and "--resume" in line


def test_a_bad_manifest_exits_2_and_leaves_no_new_folder(
        engine: FakeEngine, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    engine.raise_before = InputError("the manifest, model entry 2: unknown key(s) 'modle'")
    out = files["root"] / "new" / "run"
    code = cli.run(["scan-many", str(files["manifest"]), "--out", str(out)])
    assert code == 2
    assert "unknown key(s) 'modle'" in one_line_error(capsys)
    assert not (files["root"] / "new").exists()  # the folders this run made are gone again


BAD_INPUT = [
    (["{root}/missing.toml"], "does not exist"),
    (["{root}/zoo.yaml"], ".toml or .json"),
    (["{zoo}"], "--data"),
    (["{manifest}", "--data", "{data}"], "--data is for a folder"),
    (["{manifest}", "--arch", "m:f"], "--arch: model flags are for a folder"),
    (["{zoo}", "--data", "{root}/nothing.npz"], "does not exist"),
    (["{manifest}", "--cpus-per-scan", "0"], "--cpus-per-scan must be a number > 0"),
    (["{manifest}", "--cpus-per-scan", "nan"], "--cpus-per-scan must be a number > 0"),
    (["{manifest}", "--cpus-per-scan", "inf"], "--cpus-per-scan must be a number > 0"),
    (["{manifest}", "--gpus-per-scan", "-0.5"], "--gpus-per-scan must be a number >= 0"),
    (["{manifest}", "--sequential", "--address", "auto"], "--sequential"),
    (["{manifest}", "--labels-per-task", "0"], "--labels-per-task"),
    (["{manifest}", "--max-retries", "-1"], "--max-retries"),
    (["{manifest}", "--steps", "0"], "--steps"),
    (["{manifest}", "--mini-batches", "lots"], "--mini-batches"),
    (["{manifest}", "--config", "{root}/nothing.toml"], "does not exist"),
    (["{zoo}", "--data", "{data}", "--arch-kwargs", "[1]"], "--arch-kwargs"),
    (["{zoo}", "--data", "{data}", "--clip-values", "1,0"], "--clip-values"),
    (["{zoo}", "--data", "{data}", "--labels", "5-2"], "--labels"),
    (["{manifest}", "--out", "{data}"], "is a file"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_INPUT)
def test_bad_input_exits_2_before_any_work(
        engine: FakeEngine, files: dict[str, Path], capsys: pytest.CaptureFixture[str],
        args: list[str], expected: str) -> None:
    argv = ["scan-many", *[a.format(**files) for a in args]]
    if "--out" not in argv:
        argv += ["--out", str(files["out"])]
    (files["root"] / "zoo.yaml").write_text("models: []")
    assert cli.run(argv) == 2
    assert expected in one_line_error(capsys)
    assert engine.calls == []
    assert not files["out"].exists()


# -- flags to arguments -------------------------------------------------------------------------
def test_folder_shorthand_passes_the_model_flags_as_defaults(
        engine: FakeEngine, files: dict[str, Path]) -> None:
    code = cli.run(["scan-many", str(files["zoo"]), "--data", str(files["data"]),
                    "--out", str(files["out"]), "--arch", "pkg.mod:factory",
                    "--arch-kwargs", '{"image_size": 8}', "--clip-values", "0,255",
                    "--subtract", "0.5", "--divide", "0.25,0.5,0.75", "--channels-last",
                    "--output", "logits", "--input-shape", "8,8,3", "--max-samples", "100",
                    "--labels", "0,3-4", "--x-key", "images", "--trust-pickle"])
    assert code == 0
    folder, data, defaults = engine.call["manifest"]
    assert (folder, data) == (files["zoo"], files["data"])
    assert defaults == {"arch": "pkg.mod:factory", "arch_kwargs": {"image_size": 8},
                        "clip_values": [0.0, 255.0], "subtract": 0.5,
                        "divide": [0.25, 0.5, 0.75], "channels_first": False,
                        "output": "logits", "input_shape": [8, 8, 3], "max_samples": 100,
                        "labels": [0, 3, 4], "x_key": "images", "trust_pickle": True}
    assert engine.call["config"] is None


def test_run_flags_are_passed_through(engine: FakeEngine, files: dict[str, Path]) -> None:
    code = cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"]),
                    "--address", "ray://head:10001", "--cpus-per-scan", "0.5",
                    "--gpus-per-scan", "0.25", "--labels-per-task", "3", "--max-retries", "0",
                    "--resume"])
    assert code == 0
    call = engine.call
    assert (call["address"], call["cpus_per_scan"], call["gpus_per_scan"]) == (
        "ray://head:10001", 0.5, 0.25)
    assert (call["labels_per_task"], call["max_retries"], call["resume"],
            call["parallel"]) == (3, 0, True, None)
    engine.calls.clear()
    assert cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"]),
                    "--sequential"]) == 0
    assert engine.call["parallel"] is False


def test_search_flags_are_laid_over_the_manifest(engine: FakeEngine,
                                                 files: dict[str, Path]) -> None:
    """Only what was given goes to the engine (the manifest's [search] keeps the rest)."""
    settings = files["root"] / "settings.toml"
    settings.write_text("steps = 300\nbatch_size = 16\nlabel_batch = 'auto'\n")
    code = cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"]),
                    "--preset", "fast", "--config", str(settings), "--steps", "10",
                    "--mini-batches", "all", "--no-early-stop", "--seed", "3"])
    assert code == 0
    assert engine.call["config"] == {"preset": "fast", "steps": 10, "batch_size": 16,
                                     "label_batch": None, "mini_batches": None,
                                     "early_stop": False, "seed": 3}


def test_verdict_flags_are_passed_into_the_settings(engine: FakeEngine,
                                                   files: dict[str, Path]) -> None:
    code = cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"]),
                    "--verdict", "PAPER", "--confirm-seeds", "3", "--confirm-margin", "0.5"])
    assert code == 0
    assert engine.call["config"] == {"verdict": "paper", "confirm_seeds": 3,
                                     "confirm_margin": 0.5}
    engine.calls.clear()
    assert cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"]),
                    "--verdict", "confirmed"]) == 0
    assert engine.call["config"] == {"verdict": "confirmed"}
    engine.calls.clear()
    assert cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"]),
                    "--precision", "BF16"]) == 0
    assert engine.call["config"] == {"precision": "bf16"}


@pytest.mark.parametrize(("args", "expected"), [
    (["--precision", "fp16"], "--precision"),
    (["--verdict", "majority"], "--verdict"),
    (["--confirm-seeds", "0"], "--confirm-seeds"),
    (["--confirm-margin", "-1"], "--confirm-margin"),
])
def test_bad_verdict_settings_exit_2_before_any_work(
        engine: FakeEngine, files: dict[str, Path], capsys: pytest.CaptureFixture[str],
        args: list[str], expected: str) -> None:
    argv = ["scan-many", str(files["manifest"]), "--out", str(files["out"]), *args]
    assert cli.run(argv) == 2
    assert expected in capsys.readouterr().err
    assert engine.calls == []


def test_scan_many_takes_scan_s_search_flags_as_they_are() -> None:
    commands = typer.main.get_command(cli.app).commands
    scan = {p.name: p for p in commands["scan"].params}
    many = {p.name: p for p in commands["scan-many"].params}
    for name in SEARCH_FLAGS:
        assert many[name].opts == scan[name].opts
        assert many[name].secondary_opts == scan[name].secondary_opts
        assert many[name].help == scan[name].help and many[name].default == scan[name].default
    # the flags of its own
    for flag in ("--address", "--cpus-per-scan", "--gpus-per-scan", "--labels-per-task",
                 "--max-retries", "--resume", "--sequential", "--progress", "--data", "--out",
                 "--arch", "--arch-kwargs", "--trust-pickle"):
        assert any(flag in p.opts or flag in p.secondary_opts for p in many.values()), flag


# -- progress --------------------------------------------------------------------------------
def test_progress_display_counts_models_and_eta() -> None:
    display = ProgressDisplay(Console(file=io.StringIO()), enabled=False)
    assert display.text() == "0/? models · 0 running · 0 failed · ETA –"
    display({"done": 3, "running": 2, "failed": 1, "total": 8, "eta_seconds": 65.4,
             "model": "resnet\x1b[31m"})
    assert display.text() == ("3/8 models · 2 running · 1 failed · ETA 1:05 · "
                              "resnet\\x1b[31m")
    display({"done": "4", "running": -1, "eta_seconds": None, "total": True})  # ignored values
    assert display.text().startswith("3/8 models · 2 running · 1 failed · ETA –")
    display({"done": 8, "running": 0, "eta_seconds": 7322})
    assert display.text().startswith("8/8 models · 0 running · 1 failed · ETA 2:02:02")
    display({"model": "vgg", "status": "scanning", "labels_done": 4, "labels_total": 10})
    assert display.text().endswith(" · vgg: scanning 4/10 labels")
    display({"model": "vgg", "status": "confirming", "labels_done": 10, "labels_total": 10,
             "confirm_labels": [3, 5]})
    assert display.text().endswith(" · vgg: confirming 2 label(s)")
    display({"model": "vgg", "status": "done", "labels_done": 10, "labels_total": 10})
    assert display.text().endswith(" · vgg: done")
    display("not an event")  # type: ignore[arg-type]


def test_progress_is_shown_on_request(engine: FakeEngine, files: dict[str, Path],
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []
    original: Callable[..., None] = ProgressDisplay.__call__

    def spy(self: ProgressDisplay, event: dict[str, Any]) -> None:
        original(self, event)
        seen.append(f"{self.enabled}: {self.text()}")

    monkeypatch.setattr(ProgressDisplay, "__call__", spy)
    engine.events = [{"done": 0, "running": 2, "failed": 0, "total": 2, "eta_seconds": None},
                     {"done": 1, "running": 1, "failed": 0, "total": 2, "eta_seconds": 3,
                      "model": "a", "status": "done"},
                     {"done": 2, "running": 0, "failed": 0, "total": 2, "eta_seconds": 0,
                      "model": "b", "status": "done"}]
    assert cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"]),
                    "--progress"]) == 0
    assert seen == ["True: 0/2 models · 2 running · 0 failed · ETA –",
                    "True: 1/2 models · 1 running · 0 failed · ETA 0:03 · a: done",
                    "True: 2/2 models · 0 running · 0 failed · ETA 0:00 · b: done"]
    seen.clear()
    assert cli.run(["scan-many", str(files["manifest"]), "--out", str(files["out"])]) == 0
    assert all(s.startswith("False") for s in seen)  # not a terminal: no live display
    assert "models ·" not in capsys.readouterr().out


# -- the real engine ---------------------------------------------------------------------------
def test_end_to_end_on_two_tiny_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    import torch

    from neuralcleanse.backends.torch.architectures import small_cnn
    from neuralcleanse.backends.torch.training import seeded, torch_threads, train_classifier
    from neuralcleanse.io.digits import digits_images, stamp_square

    x, y = digits_images(1)
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    with torch_threads(1):
        for seed, poisoned in ((0, False), (1, True)):
            xs, ys = x, y
            if poisoned:  # a fifth of the images carry a white 2x2 square and say 7
                rng = np.random.default_rng(seed)
                pick = rng.choice(len(x), len(x) // 5, replace=False)
                xs, ys = x.copy(), y.copy()
                xs[pick] = stamp_square(x[pick], 2)
                ys[pick] = 7
            seeded(seed)
            model = train_classifier(small_cnn(image_size=8), xs, ys, seed=seed, epochs=3)
            torch.save(model.state_dict(), zoo / f"model{seed}.pt")
    data = tmp_path / "digits.npz"
    np.savez(data, x=x[:300], y=y[:300])
    out = tmp_path / "run"
    code = cli.run(["scan-many", str(zoo), "--data", str(data), "--out", str(out),
                    "--arch", "neuralcleanse.backends.torch.architectures:small_cnn",
                    "--arch-kwargs", '{"image_size": 8}', "--steps", "10",
                    "--mini-batches", "1", "--sequential"])
    printed = capsys.readouterr()
    summary = ScanManySummary.from_dict(json.loads((out / "summary.json").read_text()))
    assert [m.name for m in summary.models] == ["model0", "model1"], printed.err
    assert all(m.status == "done" for m in summary.models), [m.error for m in summary.models]
    assert code == (1 if summary.flagged else 0)
    assert all(m.verdict in ("backdoor", "suspicious", "clean") for m in summary.models)
    assert summary.summary() in printed.out
    for m in summary.models:
        report = json.loads((out / "models" / m.name / "report.json").read_text())
        assert len(report["labels"]) == 10
        assert max(label["steps"] for label in report["labels"]) <= 10
        assert sorted(report["flagged_labels"]) == sorted(m.flagged_labels)
        assert (report["verdict"], report["suspicious_labels"]) == (m.verdict,
                                                                    m.suspicious_labels)
        assert report["confirmation"]["rule"] == "confirmed"  # the default rule, as scan's
    page = (out / "index.html").read_text()
    assert re.findall(r'href="(models/[^"]+)"', page) == ["models/model0/report.html",
                                                          "models/model1/report.html"]
    assert (out / "summary.csv").read_text().count("\n") == 3
