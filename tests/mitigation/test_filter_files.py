"""Input-filter files: a saved filter loads back to the same decisions; bad files are refused.

A small CNN is trained here on scikit-learn's 8x8 digits with a planted trigger (a 2x2 white
square at the bottom-right sends any digit to label 3); the filters are fitted with that known
trigger. The broken and hostile files are built at test time from a good one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import neuralcleanse as nc
from neuralcleanse.backends.torch.architectures import small_cnn
from neuralcleanse.backends.torch.training import seeded, train_classifier
from neuralcleanse.core.errors import InputError, InputTypeError, LoadError
from neuralcleanse.core.results import LabelResult
from neuralcleanse.frontends.api import prepare
from neuralcleanse.io.digits import digits_images, stamp_square
from neuralcleanse.io.filter_files import (
    FILTER_FORMAT,
    MAX_FILTER_BYTES,
    read_filter_file,
)
from neuralcleanse.mitigation import filter_inputs
from neuralcleanse.mitigation.result import MitigationResult
from torch_models import poisoned_training_set

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGET = 3
WIDTH = 8




def trigger(channels_first: bool = True) -> LabelResult:
    mask = np.zeros((8, 8), np.float32)
    mask[6:, 6:] = 1.0
    pattern = np.ones((1, 8, 8) if channels_first else (8, 8, 1), np.float32)
    return LabelResult(label=TARGET, mask=mask, pattern=pattern, norm=4.0,
                       attack_success_rate=1.0, converged=True, steps=0, seconds=0.0,
                       final_cost=0.0)


def new_model(nb_classes: int = 10, image_size: int = 8) -> torch.nn.Module:
    seeded(1)
    return small_cnn(nb_classes=nb_classes, image_size=image_size, width=WIDTH).eval()


@pytest.fixture(scope="module")
def case() -> dict[str, Any]:
    """A backdoored digits CNN, its clean fitting data, test inputs and a fitted filter."""
    x, y = digits_images()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    xp, yp = poisoned_training_set(x[:1000], y[:1000], TARGET, 2, 0.1, seed=0)
    seeded(0)
    model = train_classifier(small_cnn(image_size=8, width=WIDTH), xp, yp, seed=0, epochs=15)
    x_test, y_test = x[1400:], y[1400:]
    triggered = stamp_square(x_test[y_test != TARGET], 2)
    result = nc.mitigate(model, x[1000:1400], y[1000:1400], [trigger()], "filtering",
                         top_fraction=0.1)
    return {"model": model, "x": x[1000:1400], "y": y[1000:1400], "filter": result.model,
            "result": result, "inputs": np.concatenate([x_test, triggered]),
            "n_clean": len(x_test)}


def same_decisions(a: Any, b: Any) -> None:
    assert a.scores.dtype == b.scores.dtype
    np.testing.assert_array_equal(a.scores, b.scores)  # bit for bit
    np.testing.assert_array_equal(a.refused, b.refused)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert a.threshold == b.threshold


def strict_json(path: Path) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"the file holds {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


# -- save -> load -----------------------------------------------------------------------------
def test_torch_filter_loads_back_to_the_same_decisions(case: dict, tmp_path: Path) -> None:
    filt = case["filter"]
    path = filt.save(tmp_path / "filter.json")
    loaded = nc.load_filter(path, case["model"])
    before, after = filt.decisions(case["inputs"]), loaded.decisions(case["inputs"])
    same_decisions(before, after)
    n = case["n_clean"]
    # not vacuous: the filter refuses most triggered inputs and few clean ones
    assert before.refused[n:].mean() >= 0.6 and before.refused[:n].mean() <= 0.15
    assert np.all(before.predictions[before.refused] == -1)
    np.testing.assert_array_equal(filt.predict(case["inputs"]), loaded.predict(case["inputs"]))
    doc = strict_json(path)
    report = filt.report
    assert doc["format"] == FILTER_FORMAT and doc["schema_version"] == 3
    assert doc["layer"] == "final_layer_input" and doc["n_neurons"] == report.n_neurons
    assert doc["labels"] == [{"label": TARGET, "neurons": report.neurons[TARGET],
                              "weights": filt.weights[TARGET].tolist(),
                              "center": filt.center[TARGET], "scale": filt.scale[TARGET]}]
    assert doc["score"] == "fisher" and len(set(doc["labels"][0]["weights"])) > 1
    assert doc["threshold"] == filt.threshold and doc["target_fpr"] == 0.05
    assert doc["fpr_confidence"] == 0.8 and loaded.file_info["fpr_confidence"] == 0.8
    assert doc["false_positive_rate"] == report.false_positive_rate
    assert doc["detection_rate"] == report.detection_rate and doc["top_fraction"] == 0.1
    assert doc["model"] == {"framework": "pytorch", "model_class": "Sequential",
                            "input_shape": [1, 8, 8], "nb_classes": 10, "channels_first": True,
                            "clip_values": [0.0, 1.0], "output": "logits",
                            "preprocessing": None, "file_sha256": None}
    # a loaded filter saves the same file again (its rates kept in file_info)
    again = loaded.save(tmp_path / "again.json")
    assert strict_json(again) == doc


def test_a_filtering_result_saves_its_filter(case: dict, tmp_path: Path) -> None:
    result = case["result"]
    digest = hashlib.sha256(b"the model file").hexdigest()
    written = result.save(tmp_path / "filter.json", model_sha256=digest)
    assert written == str(tmp_path / "filter.json")
    direct = case["filter"].save(tmp_path / "direct.json", model_sha256=digest)
    assert strict_json(Path(written)) == strict_json(direct)
    assert strict_json(Path(written))["model"]["file_sha256"] == digest
    same_decisions(nc.load_filter(written, case["model"]).decisions(case["inputs"]),
                   case["filter"].decisions(case["inputs"]))
    # a result read back from JSON holds no filter
    with pytest.raises(InputError, match="holds no input filter"):
        MitigationResult.from_json(result.to_json()).save(tmp_path / "none.json")
    assert not (tmp_path / "none.json").exists()


def test_a_repaired_model_takes_no_model_sha256(case: dict, tmp_path: Path) -> None:
    pruned = nc.mitigate(case["model"], case["x"], case["y"], [trigger()], "pruning",
                         max_fraction=0.1)
    with pytest.raises(InputError, match="model_sha256= applies to an input filter"):
        pruned.save(tmp_path / "pruned.pt", model_sha256="0" * 64)
    assert not (tmp_path / "pruned.pt").exists()
    assert Path(pruned.save(tmp_path / "pruned.pt")).is_file()


def test_layer_given_by_index_is_kept_with_its_name(case: dict, tmp_path: Path) -> None:
    clf, x, y = prepare(case["model"], case["x"], case["y"])
    index = clf.layer_names().index("4")  # the second convolution's ReLU: 16 channels
    filt = filter_inputs(clf, x, y, [trigger()], layer=index, top_fraction=0.25)
    doc_path = filt.save(tmp_path / "by_index.json")
    doc = strict_json(doc_path)
    assert doc["layer"] == index and doc["layer_name"] == "4" and doc["n_neurons"] == 2 * WIDTH
    loaded = nc.load_filter(doc_path, case["model"])
    same_decisions(filt.decisions(case["inputs"]), loaded.decisions(case["inputs"]))
    # the same index in a model whose layers are named otherwise names another layer: refused
    other = torch.nn.Sequential(torch.nn.Identity(), case["model"]).eval()
    with pytest.raises(LoadError, match="which is layer '1.3' in this model, but the filter "
                                        "was fitted on layer '4'"):
        nc.load_filter(doc_path, other)


def test_preprocessing_is_restored_and_a_function_must_be_given_again(case: dict,
                                                                       tmp_path: Path) -> None:
    pair = (np.float32(0.1), np.float32(0.5))
    result = nc.mitigate(case["model"], case["x"], case["y"], [trigger()], "filtering",
                         preprocessing=pair)
    path = result.model.save(tmp_path / "pair.json")
    loaded = nc.load_filter(path, case["model"])  # the pair comes from the file
    same_decisions(result.model.decisions(case["inputs"]), loaded.decisions(case["inputs"]))
    with pytest.raises(LoadError, match="preprocessing="):
        nc.load_filter(path, case["model"], preprocessing=(0.2, 0.5))

    def shift(t: torch.Tensor) -> torch.Tensor:
        return (t - 0.1) / 0.5

    fn = nc.mitigate(case["model"], case["x"], case["y"], [trigger()], "filtering",
                     preprocessing=shift)
    path = fn.model.save(tmp_path / "fn.json")
    assert strict_json(path)["model"]["preprocessing"] == "shift"
    with pytest.raises(LoadError, match="preprocessing function .'shift'.*pass that function"):
        nc.load_filter(path, case["model"])
    again = nc.load_filter(path, case["model"], preprocessing=shift)
    same_decisions(fn.model.decisions(case["inputs"]), again.decisions(case["inputs"]))


def test_keras_filter_loads_back_to_the_same_decisions(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    x, y = digits_images(channels_first=False)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
        keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="logits")])
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:800], y[:800], epochs=3, batch_size=64, verbose=0)
    inputs = np.concatenate([x[1400:], stamp_square(x[1400:], 2, channels_first=False)])
    for layer in (None, "conv"):
        result = nc.mitigate(model, x[1000:1400], y[1000:1400], [trigger(False)], "filtering",
                             layer=layer, top_fraction=0.25)
        path = result.model.save(tmp_path / f"keras_{layer}.json")
        doc = strict_json(path)
        assert doc["model"]["channels_first"] is False
        assert doc["model"]["input_shape"] == [8, 8, 1]
        loaded = nc.load_filter(path, model)
        same_decisions(result.model.decisions(inputs), loaded.decisions(inputs))


# -- the model must be the one the filter was fitted on ----------------------------------------
def test_a_model_with_another_number_of_classes_is_refused(case: dict, tmp_path: Path) -> None:
    path = case["filter"].save(tmp_path / "filter.json")
    with pytest.raises(LoadError) as caught:
        nc.load_filter(path, new_model(nb_classes=5))
    text = str(caught.value)
    assert "\n" not in text and str(path) in text
    assert "10 outputs (classes), but this model has 5" in text


def test_a_model_with_another_input_size_or_layer_width_is_refused(case: dict,
                                                                    tmp_path: Path) -> None:
    path = case["filter"].save(tmp_path / "filter.json")
    with pytest.raises(LoadError, match="does not fit the model"):
        nc.load_filter(path, new_model(image_size=16))
    seeded(0)
    wider = torch.nn.Sequential(*list(small_cnn(image_size=8, width=WIDTH))[:-3],
                                torch.nn.Linear(2 * WIDTH * 4, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10)).eval()
    with pytest.raises(LoadError, match="with 64 neurons, but that layer of this model has 32"):
        nc.load_filter(path, wider)


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("clip_values", (0.0, 255.0), "clip_values=0,1, but clip_values=0,255"),
    ("channels_first", False, "channels_first=True, but channels_first=False"),
    ("output", "probabilities", "output= is 'logits'"),
    ("preprocessing", (0.5, 2.0), "preprocessing="),
])
def test_options_that_contradict_the_file_are_refused(case: dict, tmp_path: Path, option: str,
                                                      value: Any, expected: str) -> None:
    path = case["filter"].save(tmp_path / "filter.json")
    with pytest.raises(LoadError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        nc.load_filter(path, case["model"], **{option: value})
    assert nc.load_filter(path, case["model"], clip_values=(0, 1), channels_first=True,
                          output="logits").threshold == case["filter"].threshold


def test_model_file_sha256_is_checked_when_its_path_is_given(case: dict, tmp_path: Path) -> None:
    weights = tmp_path / "model.pt"
    torch.save(case["model"].state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    path = case["filter"].save(tmp_path / "filter.json", model_sha256=digest.upper())
    assert strict_json(path)["model"]["file_sha256"] == digest
    nc.load_filter(path, case["model"], model_path=weights)
    other = tmp_path / "other.pt"
    torch.save(new_model().state_dict(), other)
    with pytest.raises(LoadError, match=r"SHA-256 .*ignore_sha256=True") as caught:
        nc.load_filter(path, case["model"], model_path=other)
    assert "\n" not in str(caught.value)
    with pytest.warns(UserWarning, match="using the filter anyway"):
        nc.load_filter(path, case["model"], model_path=other, ignore_sha256=True)
    with pytest.raises(InputError, match="model_sha256 must be a SHA-256"):
        case["filter"].save(tmp_path / "bad.json", model_sha256="not-a-digest")


# -- broken and hostile files ------------------------------------------------------------------
def edit(change: Callable[[dict], Any]) -> Callable[[str], str]:
    """A text transformation that parses the document, changes it and writes it back."""
    def apply(text: str) -> str:
        doc = json.loads(text)
        change(doc)
        return json.dumps(doc)
    return apply


def setter(*keys: Any, value: Any) -> Callable[[str], str]:
    def change(doc: dict) -> None:
        target = doc
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit(change)


def literal(field: str, token: str) -> Callable[[str], str]:
    """Set a top-level field to raw JSON text (tokens json.dumps cannot write)."""
    def apply(text: str) -> str:
        doc = json.loads(text)
        doc[field] = "@@"
        return json.dumps(doc).replace('"@@"', token)
    return apply


FILE_CASES: list[tuple[str, Callable[[str], str], str]] = [
    ("wrong type", setter("n_neurons", value="64"), "field 'n_neurons' must be an integer"),
    ("boolean label", setter("labels", 0, "label", value=True), "field 'labels[0].label'"),
    ("huge number", literal("threshold", "1e400"), "field 'threshold' must be a finite"),
    ("huge integer", literal("threshold", "9" * 60), "field 'threshold' must be a finite"),
    ("endless integer", literal("threshold", "9" * 5000), "number too long"),
    ("NaN", literal("threshold", "NaN"), "holds NaN"),
    ("Infinity", literal("target_fpr", "-Infinity"), "holds -Infinity"),
    ("neuron out of range", setter("labels", 0, "neurons", value=[0, 64]),
     "field 'labels[0].neurons' holds 64, not a neuron index in [0, 63]"),
    ("negative neuron", setter("labels", 0, "neurons", value=[-1]), "labels[0].neurons"),
    ("repeated neuron", setter("labels", 0, "neurons", value=[2, 2]), "more than once"),
    ("label out of range", setter("labels", 0, "label", value=10), "labels[0].label"),
    ("zero spread", setter("labels", 0, "scale", value=0), "labels[0].scale"),
    ("no labels", setter("labels", value=[]), "field 'labels' must be a list of 1 to 10"),
    ("rate above one", setter("target_fpr", value=1.5), "field 'target_fpr'"),
    ("layer as list", setter("layer", value=[1]), "field 'layer' must be a string"),
    ("reduce payload", setter("__reduce__", value=["os.system", ["echo owned"]]),
     "unknown field(s) '__reduce__' at the top level"),
    ("payload in model", setter("model", "py/object", value="os.system"),
     "unknown field(s) 'py/object' in field 'model'"),
    ("payload in label", setter("labels", 0, "__class__", value="subprocess.Popen"),
     "in field 'labels[0]'"),
    ("missing field", edit(lambda d: d.pop("threshold")), "field 'threshold' is missing"),
    ("other format", setter("format", value="pickle"), "not an input filter file"),
    ("newer schema", setter("schema_version", value=4), "newer neuralcleanse"),
    ("certain confidence", setter("fpr_confidence", value=1.0), "field 'fpr_confidence'"),
    ("text confidence", setter("fpr_confidence", value="high"), "field 'fpr_confidence'"),
    ("weights of another length", setter("labels", 0, "weights", value=[1.0]),
     "field 'labels[0].weights' must be a list of 7 numbers, one per neuron (got a list of 1)"),
    ("text weight", edit(lambda d: d["labels"][0]["weights"].__setitem__(0, "x")),
     "field 'labels[0].weights' holds 'x', not a finite number"),
    ("huge weight", edit(lambda d: d["labels"][0]["weights"].__setitem__(0, 1e300)),
     "field 'labels[0].weights' holds 1e+300, not a finite number in [-1e+30, 1e+30]"),
    ("unknown score", setter("score", value="lda"), "field 'score' must be one of 'fisher'"),
    ("bad digest", setter("model", "file_sha256", value="00zz"), "file_sha256"),
    ("reversed range", setter("model", "clip_values", value=[1, 0]), "model.clip_values"),
    ("bad input shape", setter("model", "input_shape", value=[0, 8, 8]), "model.input_shape"),
    ("one class", setter("model", "nb_classes", value=1), "model.nb_classes"),
    ("text in preprocessing", setter("model", "preprocessing", value=[["a"], 1]),
     "model.preprocessing[0]"),
    ("division by zero", setter("model", "preprocessing", value=[0, 0]), "divisor"),
    ("truncated", lambda text: text[:len(text) // 2], "is not valid JSON (truncated"),
    ("duplicate key", lambda text: text.rstrip()[:-1] + ', "threshold": 0.0}', "'threshold' twice"),
    ("not an object", lambda text: "[1, 2, 3]", "the document must be a JSON object"),
    ("deep nesting", lambda text: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
]


@pytest.fixture(scope="module")
def good_text(case: dict, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = case["filter"].save(tmp_path_factory.mktemp("good") / "filter.json")
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize(("name", "change", "expected"), FILE_CASES,
                         ids=[c[0] for c in FILE_CASES])
def test_broken_and_hostile_files_are_refused_in_one_line(
        case: dict, good_text: str, tmp_path: Path, name: str,
        change: Callable[[str], str], expected: str) -> None:
    path = tmp_path / "filter.json"
    path.write_text(change(good_text), encoding="utf-8")
    for attempt in (lambda: read_filter_file(path), lambda: nc.load_filter(path, case["model"])):
        with pytest.raises(LoadError) as caught:
            attempt()
        text = str(caught.value)
        assert "\n" not in text and text.startswith(f"filter file {str(path)!r}"), text
        assert expected in text, text


class _OpensAFile:
    """Unpickling this creates ``path`` (a payload that leaves a trace)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (str(self.path), "w")


def test_hostile_filter_files_never_run_their_payload(case: dict, good_text: str,
                                                      tmp_path: Path) -> None:
    import pickle

    from neuralcleanse.io.filter_loading import load_filter

    # the payload is live: unpickled, it creates its file
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_OpensAFile(control)))
    assert control.exists()
    marker = tmp_path / "owned"
    doc = json.loads(good_text)
    hostile = {
        "pickle.json": pickle.dumps(_OpensAFile(marker)),
        "reduce.json": json.dumps({**doc, "__reduce__": ["builtins.open", [str(marker), "w"]]}
                                  ).encode(),
        "jsonpickle.json": json.dumps({**doc, "model": {**doc["model"], "py/reduce": [
            {"py/function": "builtins.open"}, {"py/tuple": [str(marker), "w"]}]}}).encode(),
        "object.json": json.dumps({"py/object": "builtins.open", "file": str(marker)}).encode(),
        # the newest field holds a payload too
        "confidence.json": json.dumps({**doc, "fpr_confidence": {"py/reduce": [
            {"py/function": "builtins.open"}, {"py/tuple": [str(marker), "w"]}]}}).encode(),
    }
    for name, content in hostile.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(LoadError) as caught:
            load_filter(path, case["model"])
        assert "\n" not in str(caught.value), name
        assert not marker.exists(), f"{name}: the file's payload ran"


def test_files_that_are_not_filter_files_at_all_are_refused(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    with huge.open("wb") as handle:  # 100 MB, sparse: nothing is written
        handle.truncate(100 * 2**20)
    assert huge.stat().st_size > MAX_FILTER_BYTES
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    for path, expected in ((huge, "larger than 32 MiB"), (binary, "not UTF-8"),
                           (tmp_path, "not a regular file"),
                           (tmp_path / "missing.json", "does not exist")):
        with pytest.raises(LoadError, match=expected):
            read_filter_file(path)
    with pytest.raises(InputTypeError, match="path must be a file path"):
        read_filter_file(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(("layer", "expected"), [
    ("nope", "field 'layer' ('nope') does not fit the model: unknown layer 'nope'"),
    (99, "field 'layer' does not fit the model: layer index 99 is out of range"),
])
def test_a_layer_the_model_lacks_is_refused(case: dict, good_text: str, tmp_path: Path,
                                            layer: Any, expected: str) -> None:
    path = tmp_path / "filter.json"
    path.write_text(setter("layer", value=layer)(good_text), encoding="utf-8")
    read_filter_file(path)  # a valid file on its own
    with pytest.raises(LoadError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        nc.load_filter(path, case["model"])


def test_a_neuron_count_the_layer_lacks_is_refused(case: dict, good_text: str,
                                                   tmp_path: Path) -> None:
    path = tmp_path / "filter.json"
    path.write_text(setter("n_neurons", value=1000)(good_text), encoding="utf-8")
    with pytest.raises(LoadError, match="with 1000 neurons, but that layer of this model has 64"):
        nc.load_filter(path, case["model"])


def test_an_unfitted_filter_cannot_be_saved(case: dict, tmp_path: Path) -> None:
    filt = nc.InputFilter(case["filter"].classifier, None, {TARGET: np.array([0])},
                          {TARGET: 0.0}, {TARGET: 1.0}, threshold=float("inf"))
    with pytest.raises(InputError, match="only a filter fitted"):
        filt.save(tmp_path / "f.json")
    assert not (tmp_path / "f.json").exists()


def test_a_version_2_file_does_not_know_its_confidence(case: dict, good_text: str,
                                                       tmp_path: Path) -> None:
    """Files written before the confidence existed load, and say they do not know it."""
    def old(doc: dict) -> None:
        doc["schema_version"] = 2
        doc.pop("fpr_confidence")
    path = tmp_path / "filter.json"
    path.write_text(edit(old)(good_text), encoding="utf-8")
    loaded = nc.load_filter(path, case["model"])
    assert loaded.file_info["fpr_confidence"] is None and loaded.file_info["target_fpr"] == 0.05
    assert loaded.threshold == case["filter"].threshold
    assert "fpr_confidence" not in {k for k, v in strict_json(
        loaded.save(tmp_path / "again.json")).items() if v is not None}


def test_a_version_1_file_weighs_its_neurons_equally(case: dict, good_text: str,
                                                     tmp_path: Path) -> None:
    """Files written before the weights existed load as the mean filters they were."""
    def old(doc: dict) -> None:
        doc["schema_version"] = 1
        doc.pop("score")
        for entry in doc["labels"]:
            entry.pop("weights")
    path = tmp_path / "filter.json"
    path.write_text(edit(old)(good_text), encoding="utf-8")
    loaded = nc.load_filter(path, case["model"])
    idx = loaded.neurons[TARGET]
    np.testing.assert_array_equal(loaded.weights[TARGET], np.full(len(idx), 1.0 / len(idx)))
    acts = loaded.classifier.neuron_activations(case["inputs"])
    expected = (acts[:, idx].mean(axis=1) - loaded.center[TARGET]) / loaded.scale[TARGET]
    np.testing.assert_allclose(loaded.scores(case["inputs"]), expected, rtol=1e-6, atol=1e-6)
    assert loaded.file_info["score"] is None
