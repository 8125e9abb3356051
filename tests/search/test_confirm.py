"""The confirmed verdict end to end: a tiny backdoored digits model scanned with the default rule,
the confirmation's searches against direct searches, the paper rule beside it, the JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

import neuralcleanse as nc
from neuralcleanse.backends.torch.architectures import small_cnn
from neuralcleanse.backends.torch.training import seeded, torch_threads, train_classifier
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.results import ScanResult
from neuralcleanse.frontends.api import prepare
from neuralcleanse.io.digits import digits_images, stamp_square
from neuralcleanse.search.confirm import further_seeds, search_confirmations
from neuralcleanse.search.reverse import reverse_engineer

TARGET = 7
#: Small search settings; a margin of 2.5 makes several labels candidates, not just the target.
SEARCH = {"steps": 40, "mini_batches": 2, "progress": False, "confirm_margin": 2.5}


@pytest.fixture(scope="module")
def backdoored():
    """A small CNN on 8x8 digits where a white 2x2 square at the bottom-right means 7."""
    x, y = digits_images(1)
    xs = np.concatenate([x, stamp_square(x[:300], 2)])
    ys = np.concatenate([y, np.full(300, TARGET, np.int64)])
    with torch_threads(1):
        seeded(1)
        model = train_classifier(small_cnn(image_size=8), xs, ys, seed=1, epochs=4)
    return model, x[:300], y[:300]


@pytest.fixture(scope="module")
def scans(backdoored):
    model, x, y = backdoored
    with torch_threads(1):
        seen = []
        confirmed = nc.scan(model, x, y, on_label_done=seen.append, **SEARCH)
        paper = nc.scan(model, x, y, verdict="paper", **SEARCH)
    return confirmed, paper, seen


def test_the_planted_target_is_a_confirmed_backdoor(scans) -> None:
    confirmed, _, _ = scans
    assert confirmed.verdict == "backdoor" and confirmed.flagged_labels == [TARGET]
    assert confirmed.is_backdoored and TARGET not in confirmed.suspicious_labels
    c = confirmed.confirmation
    assert c["rule"] == "confirmed" and c["seeds"] == [1, 2]
    assert c["candidates"][0] == TARGET and len(c["candidates"]) > 1
    assert set(c["runs"]) == {str(t) for t in c["candidates"]}
    assert all(len(norms) == 2 for norms in c["runs"].values())  # confirm_seeds norms each
    # the candidates' confirmed norm is the median of the first run and the further runs
    first = dict(zip(c["first_run"]["labels"], c["first_run"]["norms"]))
    for t in c["candidates"]:
        assert confirmed.label(t).norm == float(np.median([first[t], *c["runs"][str(t)]]))
        assert confirmed.label(t).mask.sum() == pytest.approx(confirmed.label(t).norm, rel=1e-4)
    others = [t for t in range(10) if t not in c["candidates"]]
    assert others and all(confirmed.label(t).norm == first[t] for t in others)
    # the extra cost: only the candidates, searched twice
    assert 0 < c["runs_label_steps"] <= len(c["candidates"]) * 2 * 40
    assert c["first_run"]["label_steps"] == sum(r.steps for r in scans[2])
    assert c["extra_label_steps_share"] == pytest.approx(
        c["runs_label_steps"] / c["first_run"]["label_steps"])
    assert c["extra_seconds"] > 0 and confirmed.wall_seconds > c["extra_seconds"]


def test_the_further_runs_equal_direct_searches_with_the_further_seeds(backdoored, scans
                                                                       ) -> None:
    confirmed, _, _ = scans
    model, x, y = backdoored
    c = confirmed.confirmation
    cfg = ScanConfig(**SEARCH)
    clf, images, targets = prepare(model, x, y)
    with torch_threads(1):
        direct = [reverse_engineer(clf, images, targets, cfg.replace(seed=s),
                                   labels=c["candidates"]) for s in further_seeds(cfg)]
        searched = search_confirmations(clf, images, targets, cfg, c["candidates"])
    for t in c["candidates"]:
        expected = [next(r.norm for r in run if r.label == t) for run in direct]
        assert c["runs"][str(t)] == expected
        assert [r.norm for r in searched[t]] == expected


def test_the_paper_rule_gives_the_first_runs_flags(scans) -> None:
    confirmed, paper, seen = scans
    first = confirmed.confirmation["first_run"]
    assert paper.flagged_labels == first["flagged"]
    assert paper.scanned_labels == first["labels"]
    assert [r.norm for r in paper.labels] == first["norms"]
    np.testing.assert_allclose(paper.anomaly_index, first["anomaly_index"], rtol=0, atol=1e-12)
    assert paper.verdict == ("backdoor" if paper.flagged_labels else "clean")
    assert paper.suspicious_labels == [] and set(paper.confirmation) == {
        "rule", "expected_false_alarm_rate"}
    # the callbacks saw the first pass only, each label once
    assert sorted(r.label for r in seen) == list(range(10))
    assert {r.label: r.norm for r in seen} == dict(zip(first["labels"], first["norms"]))


def test_the_verdict_survives_the_json_round_trip(scans, tmp_path) -> None:
    confirmed, _, _ = scans
    back = ScanResult.from_json(confirmed.to_json(tmp_path / "report.json"))
    assert back.verdict == confirmed.verdict == "backdoor"
    assert back.suspicious_labels == confirmed.suspicious_labels
    assert back.confirmation == json.loads(json.dumps(confirmed.confirmation))
    assert back.config["verdict"] == "confirmed" and back.config["confirm_seeds"] == 2
    jsonschema = pytest.importorskip("jsonschema")
    from neuralcleanse.io.json_schemas import load_schema

    doc = json.loads((tmp_path / "report.json").read_text())
    validator = jsonschema.Draft202012Validator(load_schema("report"))
    assert [e.message for e in validator.iter_errors(doc)] == []


def test_restarts_and_label_subsets_search_nothing_more(backdoored) -> None:
    model, x, y = backdoored
    with torch_threads(1):
        subset = nc.scan(model, x, y, labels=[5, 6, 7, 8], **SEARCH)
        restarted = nc.scan(model, x, y, restarts=2, **SEARCH)
    assert subset.confirmation == {"skipped": "partial scan"}
    assert subset.verdict == ("backdoor" if subset.flagged_labels else "clean")
    c = restarted.confirmation
    assert c["by"] == "restarts" and c["restarts"] == 2 and c["seeds"] == [1]
    assert sorted(c["candidates"]) == list(range(10))
    assert c["runs_label_steps"] == restarted.restarts["label_steps"][1]
    flagged_some_run = {t for run in restarted.restarts["flagged_per_run"] for t in run}
    assert restarted.suspicious_labels == sorted(
        flagged_some_run - set(restarted.flagged_labels), key=lambda t: restarted.norms[t])
    assert restarted.flagged_labels == [TARGET] and restarted.verdict == "backdoor"
    # the flagged and suspicious labels keep their other restart as a further trigger for
    # unlearning: with two runs the median lies halfway, the first run is kept, the second not
    mitigable = set(restarted.flagged_labels) | set(restarted.suspicious_labels)
    further = restarted.further_triggers
    assert sorted(r.label for r in further) == sorted(mitigable)
    for r in further:
        j = c["first_run"]["labels"].index(r.label)
        assert r.norm == pytest.approx(restarted.restarts["norms"][1][j], rel=1e-5)
        assert np.isnan(r.anomaly_index)
        kept = restarted.label(r.label)
        assert not np.array_equal(r.mask, kept.mask)
        assert kept.norm == pytest.approx(np.median([row[j] for row in
                                                     restarted.restarts["norms"]]), rel=1e-5)

