"""``neuralcleanse scan`` and the graded verdict: exit codes per verdict and ``--fail-on``,
``--verdict`` / ``--confirm-seeds`` / ``--confirm-margin`` reaching the settings (flags and
``--config`` files), the console summary, ``--format json`` and SARIF levels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.results import ScanResult
from neuralcleanse.core.verdict import expected_false_alarm_rate
from neuralcleanse.frontends import api, cli
from torch_models import untrained_cnn_files
from verdict_results import BORDERLINE, FIRST_NORMS, OUTLIER, STEPS, graded_result, label_result

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCH = ["--arch", "neuralcleanse.backends.torch.architectures:small_cnn", "--arch-kwargs",
        '{"image_size": 8}']
#: A search of a few steps: these tests are about the verdict's plumbing, not detection.
TINY = ["--steps", "3", "--mini-batches", "1", "--batch-size", "8", "--no-early-stop"]
#: The exit code of each (verdict, --fail-on), as the help and the README state it.
EXIT = {("backdoor", "backdoor"): 1, ("backdoor", "suspicious"): 1, ("backdoor", "never"): 0,
        ("suspicious", "backdoor"): 0, ("suspicious", "suspicious"): 1,
        ("suspicious", "never"): 0,
        ("clean", "backdoor"): 0, ("clean", "suspicious"): 0, ("clean", "never"): 0}




@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained 8x8 CNN's state dict and 40 random labelled images."""
    return untrained_cnn_files(tmp_path_factory.mktemp("verdict"))


def scan(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["scan", str(files["model"]), "--data", str(files["data"]), "--out", str(out),
            *ARCH, *TINY, *extra]


class FakeScan:
    """Stands in for ``api.scan``: records the settings and returns a graded result."""

    def __init__(self, verdict: str) -> None:
        self.verdict = verdict
        self.config: ScanConfig | None = None

    def __call__(self, clf: Any, images: Any, targets: Any, *, config: ScanConfig,
                 **_: Any) -> ScanResult:
        self.config = config
        return graded_result(self.verdict, config)


@pytest.mark.parametrize("fail_on", ["backdoor", "suspicious", "never"])
@pytest.mark.parametrize("verdict", ["backdoor", "suspicious", "clean"])
def test_exit_code_per_verdict_and_fail_on(files: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           verdict: str, fail_on: str) -> None:
    monkeypatch.setattr(api, "scan", FakeScan(verdict))
    out, sarif = tmp_path / "out", tmp_path / "scan.sarif"
    code = cli.run(scan(files, out, "--fail-on", fail_on, "--format", "json",
                        "--sarif", str(sarif)))
    printed = capsys.readouterr()
    assert code == EXIT[verdict, fail_on], printed.err
    document = json.loads(printed.out)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for data in (document, report):
        assert data["verdict"] == verdict
        assert data["suspicious_labels"] == {"backdoor": [BORDERLINE], "suspicious": [OUTLIER],
                                             "clean": []}[verdict]
        assert data["confirmation"]["rule"] == "confirmed"
    log = json.loads(sarif.read_text(encoding="utf-8"))
    (run,) = log["runs"]
    assert run["invocations"][0]["exitCode"] == code
    levels = {r["properties"]["label"]: r["level"] for r in run["results"]}
    assert levels == {t: "error" for t in report["flagged_labels"]} | {
        t: "warning" for t in report["suspicious_labels"]}
    # the console's verdict line (on stderr with --format json) starts with the word
    lines = printed.err.splitlines()
    assert any(line.startswith(f"{verdict.upper()}: ") for line in lines), printed.err


def test_console_summary_names_the_rule_its_cost_and_the_false_alarm_rate(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(api, "scan", FakeScan("suspicious"))
    assert cli.run(scan(files, tmp_path / "out")) == cli.EXIT_CLEAN
    lines = capsys.readouterr().out.splitlines()
    verdict = next(line for line in lines if line.startswith("SUSPICIOUS: "))
    assert f"label(s) [{OUTLIER}]" in verdict and "not on the median of 3 runs" in verdict
    rows = {cells[1].strip(): cells for line in lines
            if len(cells := line.replace("|", "│").split("│")) > 2}
    assert rows[str(OUTLIER)][-2].strip() == "SUSPICIOUS"  # the table marks the label
    assert rows[str(BORDERLINE)][-2].strip() == ""
    candidates = 2  # the outlier and the borderline label (verdict_results)
    extra = candidates * 2 * STEPS
    assert (f"confirmation: {candidates} label(s) re-searched ({OUTLIER}, {BORDERLINE}) with 2 "
            f"further seeds: {extra} extra label-steps, "
            f"{100 * extra / (len(FIRST_NORMS) * STEPS):.1f} % of the first pass's "
            f"{len(FIRST_NORMS) * STEPS}, 2.5 s") in lines
    rule = next(line for line in lines if line.startswith("rule: "))
    assert "re-searched with 2 further seeds (1, 2), decided on the median of 3 runs" in rule
    rate = expected_false_alarm_rate("confirmed", len(FIRST_NORMS))
    assert any(line.startswith("expected false-alarm rate: ") and (
        f"{100 * rate:.1f} %" if rate is not None else "not measured yet") in line
        for line in lines)


def test_precision_flag_and_config_file_reach_the_settings(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeScan("clean")
    monkeypatch.setattr(api, "scan", fake)
    cli.run(scan(files, tmp_path / "a"))
    assert fake.config is not None and fake.config.precision == "fp32"
    cli.run(scan(files, tmp_path / "b", "--precision", "BF16"))
    assert fake.config.precision == "bf16"
    settings = tmp_path / "settings.toml"
    settings.write_text('[scan]\nprecision = "bf16"\n', encoding="utf-8")
    cli.run(scan(files, tmp_path / "c", "--config", str(settings)))
    assert fake.config.precision == "bf16"
    capsys.readouterr()
    assert cli.run(scan(files, tmp_path / "d", "--precision", "fp16")) == cli.EXIT_USAGE
    assert "--precision" in capsys.readouterr().err


def test_verdict_flags_and_config_files_reach_the_settings(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeScan("backdoor")
    monkeypatch.setattr(api, "scan", fake)
    cli.run(scan(files, tmp_path / "a"))
    assert fake.config is not None
    assert (fake.config.verdict, fake.config.confirm_seeds, fake.config.confirm_margin) == \
        (ScanConfig().verdict, ScanConfig().confirm_seeds, ScanConfig().confirm_margin)
    cli.run(scan(files, tmp_path / "b", "--verdict", "PAPER", "--confirm-seeds", "3",
                 "--confirm-margin", "1.25", "--max-norm-ratio", "0.55",
                 "--small-norm-ratio", "0.2"))
    assert (fake.config.verdict, fake.config.confirm_seeds, fake.config.confirm_margin,
            fake.config.max_norm_ratio, fake.config.small_norm_ratio) == \
        ("paper", 3, 1.25, 0.55, 0.2)
    settings = tmp_path / "settings.toml"
    settings.write_text('[scan]\nverdict = "paper"\nconfirm-seeds = 5\n', encoding="utf-8")
    cli.run(scan(files, tmp_path / "c", "--config", str(settings)))
    assert (fake.config.verdict, fake.config.confirm_seeds) == ("paper", 5)
    cli.run(scan(files, tmp_path / "d", "--config", str(settings), "--verdict", "confirmed"))
    assert (fake.config.verdict, fake.config.confirm_seeds) == ("confirmed", 5)  # flag wins
    capsys.readouterr()
    for flag, value, named in (("--confirm-seeds", "17", "--confirm-seeds"),
                               ("--confirm-margin", "-1", "--confirm-margin"),
                               ("--verdict", "median", "--verdict")):
        assert cli.run(scan(files, tmp_path / "e", flag, value)) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and named in err and "Traceback" not in err
    settings.write_text('verdict = "majority"\n', encoding="utf-8")
    assert cli.run(scan(files, tmp_path / "f", "--config", str(settings))) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "settings.toml" in err and "verdict" in err and err.count("\n") == 1


def test_a_real_scan_under_the_paper_rule_runs_no_confirmation(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "paper"
    code = cli.run(scan(files, out, "--verdict", "paper"))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["config"]["verdict"] == "paper"
    assert report["confirmation"] == {
        "rule": "paper",
        "expected_false_alarm_rate": expected_false_alarm_rate("paper", report["nb_classes"])}
    assert report["suspicious_labels"] == []
    assert report["verdict"] == ("backdoor" if report["flagged_labels"] else "clean")
    assert code == EXIT[report["verdict"], "backdoor"]
    assert [entry["steps"] for entry in report["labels"]] == [3] * 10  # one run per label
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"{report['verdict'].upper()}: ") for line in lines)
    assert not any(line.startswith("confirmation:") for line in lines)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="paper-rule"' in html and 'id="confirmation-table"' not in html


def test_a_real_scan_confirms_its_borderline_labels_end_to_end(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "confirmed"
    code = cli.run(scan(files, out, "--confirm-seeds", "1", "--fail-on", "suspicious"))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    confirmation = report["confirmation"]
    assert report["config"]["verdict"] == "confirmed" and report["config"]["confirm_seeds"] == 1
    assert confirmation["rule"] == "confirmed" and confirmation["seeds"] == [1]
    candidates = confirmation["candidates"]
    norms = {entry["label"]: entry["norm"] for entry in report["labels"]}
    first = dict(zip(confirmation["first_run"]["labels"], confirmation["first_run"]["norms"]))
    assert min(first, key=first.get) in candidates  # the smallest trigger is always re-searched
    assert sorted(confirmation["runs"]) == sorted(str(t) for t in candidates)
    for t in candidates:
        (further,) = confirmation["runs"][str(t)]
        assert norms[t] == pytest.approx(np.median([first[t], further]))
    assert confirmation["runs_label_steps"] == 3 * len(candidates)
    assert code == EXIT[report["verdict"], "suspicious"]
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"{report['verdict'].upper()}: ") for line in lines)
    assert (f"confirmation: {len(candidates)} label(s) re-searched "
            f"({', '.join(map(str, candidates))}) with 1 further seed: "
            f"{3 * len(candidates)} extra label-steps") in "\n".join(lines)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="confirmation-table"' in html and "<th>seed 1: norm</th>" in html


def test_resume_ignores_the_verdict_settings(files: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Labels saved under one verdict rule are resumed under another: they are the same."""
    real_scan = api.scan

    def interrupted(clf: Any, images: Any, targets: Any, *, on_label_done: Any,
                    **_: Any) -> ScanResult:
        rng = np.random.default_rng(0)
        for t in range(4):
            on_label_done(label_result(t, 20.0 + t, rng))
        raise KeyboardInterrupt

    out = tmp_path / "resumed"
    monkeypatch.setattr(api, "scan", interrupted)
    assert cli.run(scan(files, out, "--verdict", "paper")) == cli.EXIT_INTERRUPTED
    partial = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert partial["partial"] is True and partial["confirmation"] == {"skipped": "partial scan"}
    assert "resume the scan" in (out / "report.html").read_text(encoding="utf-8")
    monkeypatch.setattr(api, "scan", real_scan)
    capsys.readouterr()
    code = cli.run(scan(files, out, "--resume", "--confirm-seeds", "1", "--confirm-margin",
                        "0"))
    assert code in (cli.EXIT_CLEAN, cli.EXIT_FLAGGED)
    assert "resuming: 4 label(s) already done" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["partial"] is False and report["confirmation"]["rule"] == "confirmed"
    first = report["confirmation"]["first_run"]
    saved = dict(zip(first["labels"], first["norms"]))
    assert [saved[t] for t in range(4)] == [20.0, 21.0, 22.0, 23.0]  # the saved labels
