"""Models and data as people have them: framework datasets, output objects, ONNX files."""

from __future__ import annotations

import importlib.util
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import neuralcleanse as nc
from neuralcleanse.backends.data import dataset_arrays
from neuralcleanse.backends.loading import load_model
from neuralcleanse.backends.torch.architectures import small_cnn
from neuralcleanse.core.errors import InputError, LoadError
from neuralcleanse.frontends.api import prepare

# scans of one or two labels have no spread of norms to judge
pytestmark = pytest.mark.filterwarnings("ignore:the median absolute deviation")

RNG = np.random.default_rng(0)
X = RNG.random((40, 1, 8, 8)).astype(np.float32)
Y = np.arange(40) % 10


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return small_cnn().eval()


class PairList(Dataset):
    """A map-style dataset of (image, int label) items, images as numpy arrays."""

    def __len__(self) -> int:
        return len(X)

    def __getitem__(self, i: int):
        return X[i], int(Y[i])


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(len(X)):
            yield {"image": torch.from_numpy(X[i]), "label": torch.tensor(Y[i])}


@pytest.mark.parametrize("data", [
    TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)),
    PairList(),
    Stream(),
    DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)), batch_size=16),
    DataLoader(PairList(), batch_size=7),
], ids=["tensor-dataset", "map-dataset", "iterable-dicts", "loader", "loader-of-pairs"])
def test_torch_datasets_are_read_in_order(model, data):
    _, images, labels = prepare(model, data)
    np.testing.assert_array_equal(images, X)
    np.testing.assert_array_equal(labels, Y)


def test_max_samples_bounds_what_is_read_and_says_so(model):
    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)), batch_size=16)
    with pytest.warns(UserWarning, match="first 20 images"):
        _, images, labels = prepare(model, loader, max_samples=20)
    np.testing.assert_array_equal(images, X[:20])
    np.testing.assert_array_equal(labels, Y[:20])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exactly all: no warning
        _, images, _ = prepare(model, PairList(), max_samples=40)
    assert len(images) == 40


@pytest.mark.parametrize("data, message", [
    (TensorDataset(torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(Y)),
     "tuples of 3 elements"),
    (DataLoader(TensorDataset(torch.from_numpy(X[:0]), torch.from_numpy(Y[:0]))),
     "no images"),
], ids=["triples", "empty"])
def test_unsupported_dataset_structures_are_one_line_input_errors(model, data, message):
    with pytest.raises(InputError, match=message) as info:
        prepare(model, data)
    assert "\n" not in str(info.value)


def test_dicts_without_an_image_and_labels_given_twice_are_refused(model):
    class Odd(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"pixels": X[i], "label": 1}

    with pytest.raises(InputError, match="dicts with keys"):
        prepare(model, Odd())
    with pytest.raises(InputError, match="leave y= out"):
        prepare(model, PairList(), Y)


def test_scan_takes_a_data_loader(model):
    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)), batch_size=8)
    cfg = dict(steps=2, mini_batches=1, batch_size=8, labels=[0, 1])
    from_loader = nc.scan(model, loader, **{k: v for k, v in cfg.items() if k != "labels"},
                          labels=cfg["labels"])
    from_arrays = nc.scan(model, X, Y, steps=2, mini_batches=1, batch_size=8, labels=[0, 1])
    assert from_loader.data_info["n_images"] == len(X)
    for a, b in zip(from_loader.labels, from_arrays.labels):
        assert a.norm == b.norm
    unlabelled = DataLoader(TensorDataset(torch.from_numpy(X)), batch_size=8)
    with pytest.raises(InputError, match="labels"):
        nc.scan(model, unlabelled, steps=1)


def test_tf_data_datasets_batched_or_not():
    tf = pytest.importorskip("tensorflow")
    x = X.transpose(0, 2, 3, 1)  # channels last, as a Keras pipeline gives them
    model = small_cnn().eval()
    for data in (tf.data.Dataset.from_tensor_slices((X, Y)),
                 tf.data.Dataset.from_tensor_slices((X, Y)).batch(6),
                 tf.data.Dataset.from_tensor_slices({"image": X, "label": Y}).batch(8)):
        _, images, labels = prepare(model, data)
        np.testing.assert_array_equal(images, X)
        np.testing.assert_array_equal(labels, Y)
    images, labels, more = dataset_arrays(tf.data.Dataset.from_tensor_slices((x, Y)).batch(5),
                                          max_samples=12)
    np.testing.assert_array_equal(images, x[:12])
    np.testing.assert_array_equal(labels, Y[:12])
    assert more
    with pytest.raises(InputError, match="tuples of 3 elements"):
        prepare(model, tf.data.Dataset.from_tensor_slices((X, Y, Y)))
    with pytest.raises(InputError, match="as its image"):
        prepare(model, tf.data.Dataset.from_tensor_slices((["a", "b"], [0, 1])))


class _HFOutput(OrderedDict):
    """What a Hugging Face model returns: a dict whose keys are also attributes."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


class _Returning(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x):
        logits = self.inner(x)
        if self.kind == "hf":
            return _HFOutput(loss=None, logits=logits, hidden_states=x)
        if self.kind == "dict":
            return {"features": x.flatten(1), "logits": logits}
        if self.kind == "tuple":
            return logits, x
        return {"scores": logits}


@pytest.mark.parametrize("kind, note", [("hf", "took .logits"), ("dict", "took ['logits']"),
                                        ("tuple", "took the first of 2 outputs")])
def test_outputs_that_are_objects_or_tuples_give_their_logits(model, kind, note):
    wrapped = _Returning(model, kind)
    clf, images, _ = prepare(wrapped, X, Y)
    assert clf.nb_classes == 10
    assert clf.describe()["outputs"] == note
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(clf.predict(images), expected, rtol=1e-6, atol=1e-6)
    result = nc.scan(wrapped, X, Y, steps=1, mini_batches=1, batch_size=8, labels=[3])
    assert result.model_info["outputs"] == note
    assert np.isfinite(result.labels[0].norm)


def test_plain_tensor_outputs_have_no_outputs_note(model):
    clf, _, _ = prepare(model, X, Y)
    assert "outputs" not in clf.describe()


def test_an_output_without_scores_is_a_clear_error(model):
    with pytest.raises(InputError, match="'logits' tensor") as info:
        prepare(_Returning(model, "other"), X, Y)
    assert "scores" in str(info.value) and "\n" not in str(info.value)


# -- ONNX -----------------------------------------------------------------------------------

def _needs_onnx() -> None:
    """Skip without onnx/onnx2torch (the loader imports onnx2torch without torchvision too)."""
    for name in ("onnx", "onnx2torch"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install onnx onnx2torch)")

def _export(model: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False,
                          input_names=["images"], output_names=["scores"],
                          dynamic_axes={"images": {0: "n"}, "scores": {0: "n"}})
    return path


def test_onnx_model_exported_here_gives_the_torch_models_outputs(model, tmp_path):
    _needs_onnx()
    path = _export(model, tmp_path / "model.onnx")
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(path.read_bytes())
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).numpy()
    for p in (path, renamed):  # by suffix, and by content
        loaded = load_model(p)
        assert (loaded.format, loaded.input_shape) == ("onnx", (1, 8, 8))
        with torch.no_grad():
            got = loaded.model(torch.from_numpy(X)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    result = nc.scan(load_model(path).model, X, Y, steps=2, mini_batches=1, batch_size=8,
                     labels=[0])
    reference = nc.scan(model, X, Y, steps=2, mini_batches=1, batch_size=8, labels=[0])
    assert result.labels[0].norm == pytest.approx(reference.labels[0].norm, rel=1e-4)
    with pytest.raises(LoadError, match="arch= is for state dicts"):
        load_model(path, arch="neuralcleanse.backends.torch.architectures:small_cnn")


def _graph(tmp_path: Path, *, node_name: str = "gemm", domain: str = "",
           external: str | None = None, inputs: int = 1) -> Path:
    _needs_onnx()
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((4, 64), 0.01, np.float32), "W")
    if external is not None:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        weight.external_data.add(key="location", value=external)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W"], ["y"], transB=1, name=node_name,
                              domain=domain)]
    graph_inputs = [helper.make_tensor_value_info(f"x{i}" if i else "x", TensorProto.FLOAT,
                                                  ["n", 1, 8, 8]) for i in range(inputs)]
    graph = helper.make_graph(nodes, "g", graph_inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
                              [weight])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    path = tmp_path / "graph.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_node_names_from_the_file_never_reach_generated_code(tmp_path):
    marker = tmp_path / "ran"
    payload = f'flat"); open({str(marker)!r}, "w"); getattr(self, "flat'
    loaded = load_model(_graph(tmp_path, node_name=payload))
    out = loaded.model(torch.ones(2, 1, 8, 8))
    np.testing.assert_allclose(out.detach().numpy(), np.full((2, 4), 0.64), rtol=1e-5)
    assert not marker.exists()


def test_onnx_files_that_are_refused(tmp_path):
    with pytest.raises(LoadError, match="outside its folder"):
        load_model(_graph(tmp_path, external="../secret.bin"))
    with pytest.raises(LoadError, match="outside its folder"):
        load_model(_graph(tmp_path, external="/etc/hostname"))
    with pytest.raises(LoadError, match="domain"):
        load_model(_graph(tmp_path, domain="com.example"))
    with pytest.raises(LoadError, match="takes 2 inputs"):
        load_model(_graph(tmp_path, inputs=2))
    garbage = tmp_path / "broken.onnx"
    garbage.write_bytes(b"\x08\x07\x12not a model")
    with pytest.raises(LoadError, match="ONNX"):
        load_model(garbage)


def test_external_data_beside_the_model_is_read(tmp_path):
    (tmp_path / "weights.bin").write_bytes(np.full((4, 64), 0.02, np.float32).tobytes())
    loaded = load_model(_graph(tmp_path, external="weights.bin"))
    out = loaded.model(torch.ones(1, 1, 8, 8)).detach().numpy()
    np.testing.assert_allclose(out, np.full((1, 4), 1.28), rtol=1e-5)
