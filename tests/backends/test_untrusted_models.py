"""Model files are untrusted: loading one never runs code stored in it without the opt-in.

Every malicious file is built here, at test time. Its payload, if it ran, would create a marker
file; each test checks both the one-line refusal and that the marker was never written. Where
it is cheap, the test first shows that the framework's own loader does run the payload, so the
refusal is known to guard a real hole.
"""

from __future__ import annotations

import builtins
import io
import json
import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from neuralcleanse.backends import loading as model_files
from neuralcleanse.backends.loading import load_model
from neuralcleanse.backends.tensorflow import loading as keras_files
from neuralcleanse.backends.torch.architectures import small_cnn
from neuralcleanse.backends.torch.export_check import pickle_globals_problem
from neuralcleanse.core.errors import LoadError
from neuralcleanse.frontends import cli

ARCH = "neuralcleanse.backends.torch.architectures:small_cnn"
ARCH_KWARGS = {"image_size": 16}


class _Eval:
    """Unpickles by calling ``eval`` on its code, as a malicious file does."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return builtins.eval, (self.code,)


def _writes(marker: Path, then: str = "None") -> str:
    """Python code that writes ``marker`` and evaluates to ``then``."""
    return f"(open({str(marker)!r}, 'w').write('ran'), {then})[1]"


def _refusal(path: Path, *, opt_in: bool = True, **kwargs: Any) -> str:
    """Load ``path``, expect a one-line LoadError naming the file (and the opt-in); return it."""
    with pytest.raises(LoadError) as info:
        load_model(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    if opt_in:
        assert "trust_pickle=True" in message, message
    return message


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return small_cnn(**ARCH_KWARGS).eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def exported(network: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A genuine torch.export archive of ``network`` with a dynamic batch dimension."""
    path = tmp_path_factory.mktemp("export") / "exported.pt2"
    program = torch.export.export(network, (torch.rand(4, 1, 16, 16),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)
    return path


def _tampered(source: Path, target: Path, edits: dict[str, Callable[[bytes], bytes]],
              extra: dict[str, bytes] | None = None) -> Path:
    """Copy the archive ``source`` to ``target`` with some records rewritten or added."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        root = archive.namelist()[0].split("/")[0]
        for info in archive.infolist():
            data = archive.read(info.filename)
            relative = info.filename.split("/", 1)[1]
            if relative in edits:
                data = edits[relative](data)
            out.writestr(info.filename, data)
        for relative, data in (extra or {}).items():
            out.writestr(f"{root}/{relative}", data)
    return target


def _json_edit(change: Callable[[Any], None]) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()

    return edit


def _saved(obj: Any, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _pickled_weight(payload: bytes) -> dict[str, Callable[[bytes], bytes]]:
    """Edits that store the first weight as a pickle (``use_pickle``) holding ``payload``."""
    def mark_pickled(doc: Any) -> None:
        doc["config"]["0.weight"]["use_pickle"] = True

    return {"data/weights/model_weights_config.json": _json_edit(mark_pickled),
            "data/weights/weight_0": lambda _: payload}


def _weight_payload(marker: Path) -> bytes:
    """A torch.save file whose unpickling writes ``marker``, then gives a valid weight."""
    weight = "__import__('torch').nn.Parameter(__import__('torch').zeros(16, 1, 3, 3))"
    return _saved(_Eval(_writes(marker, weight)))


# -- torch.export ------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt2", ".pt"])
def test_export_archive_with_pickled_weights_runs_code_in_torch_but_not_here(
        exported: Path, tmp_path: Path, batch: torch.Tensor, suffix: str) -> None:
    marker = tmp_path / "marker"
    evil = _tampered(exported, tmp_path / f"evil{suffix}", _pickled_weight(
        _weight_payload(marker)))
    # the hole: torch's own loader runs the payload, and the program then works normally
    program = torch.export.load(evil)
    assert marker.read_text() == "ran"
    assert program.module()(batch).shape == (5, 10)
    marker.unlink()

    message = _refusal(evil)
    assert "data/weights/weight_0" in message and "eval" in message
    assert not marker.exists()


def _shape_expression(marker: Path) -> dict[str, Callable[[bytes], bytes]]:
    def change(doc: Any) -> None:
        size = doc["graph_module"]["graph"]["tensor_values"]["input"]["sizes"][0]["as_expr"]
        size["expr_str"] = f"({_writes(marker)}, {size['expr_str']})[1]"

    return {"models/model.json": _json_edit(change)}


def _guard(marker: Path) -> dict[str, Callable[[bytes], bytes]]:
    def change(doc: Any) -> None:
        doc["guards_code"] = [f"{_writes(marker)} is None"]

    return {"models/model.json": _json_edit(change)}


def _operator(marker: Path) -> dict[str, Callable[[bytes], bytes]]:
    def change(doc: Any) -> None:
        node = {"target": "torch.os.system", "name": "evil", "metadata": {}, "outputs": [],
                "inputs": [{"name": "command", "kind": 1,
                            "arg": {"as_string": f"touch {marker}"}}]}
        doc["graph_module"]["graph"]["nodes"].insert(0, node)

    return {"models/model.json": _json_edit(change)}


def _opaque_constant(marker: Path) -> dict[str, Callable[[bytes], bytes]]:
    def change(doc: Any) -> None:
        doc["config"]["hidden"] = {"path_name": "opaque_obj_0", "is_param": False,
                                   "use_pickle": True, "tensor_meta": None}

    return {"data/constants/model_constants_config.json": _json_edit(change)}


def _sample_inputs(marker: Path) -> dict[str, Callable[[bytes], bytes]]:
    # torch tries weights_only=True on the example inputs, then falls back to weights_only=False
    return {"data/sample_inputs/model.pt": lambda _: _saved(_Eval(_writes(marker, "((), {})")))}


#: name -> (edits of existing records, records added, how torch itself runs it: at load, when
#: the program's module runs, or not shown here)
ATTACKS: dict[str, tuple[Callable[[Path], dict[str, Callable[[bytes], bytes]]],
                         Callable[[Path], dict[str, bytes]], str | None]] = {
    "python in a shape expression (sympify)": (_shape_expression, lambda m: {}, "load"),
    "python in a guard (exec)": (_guard, lambda m: {}, "run"),
    "example inputs pickle (weights_only fallback)": (_sample_inputs, lambda m: {}, "load"),
    "opaque constant (pickle.loads)": (
        _opaque_constant,
        lambda m: {"data/constants/opaque_obj_0": pickle.dumps(_Eval(_writes(m)))}, "load"),
    "legacy weights file": (
        lambda m: {}, lambda m: {"data/weights/model.pt": _saved(_Eval(_writes(m, "{}")))},
        "load"),
    "node calling torch.os.system": (_operator, lambda m: {}, None),
    "AOTInductor shared library": (
        lambda m: {}, lambda m: {"data/aotinductor/model/model.so": b"\x7fELF not really"},
        None),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_export_archive_code_outside_the_weights_is_refused(
        exported: Path, tmp_path: Path, batch: torch.Tensor, attack: str) -> None:
    edits, extra, torch_runs_it = ATTACKS[attack]
    marker = tmp_path / "marker"
    evil = _tampered(exported, tmp_path / "evil.pt2", edits(marker), extra(marker))
    if torch_runs_it is not None:
        try:
            program = torch.export.load(evil)
            if torch_runs_it == "run":
                program.module()(batch)
        except Exception:  # noqa: BLE001, S110 - the payload runs before torch gives up
            pass
        assert marker.exists(), "the attack no longer works on torch: update the test"
        marker.unlink()
    _refusal(evil)
    assert not marker.exists()


def test_verified_archive_keeps_tensor_pickles_and_arithmetic_guards(
        exported: Path, tmp_path: Path, network: torch.nn.Module, batch: torch.Tensor) -> None:
    """What the verification accepts still loads: pickled tensors (also pickle protocol 4,
    whose imports are STACK_GLOBAL opcodes) and guards that only compare sizes."""
    weight = torch.nn.Parameter(network[0].weight.detach().clone())
    edits = _pickled_weight(_saved(weight, pickle_protocol=4))
    edits["models/model.json"] = _json_edit(lambda doc: doc.update(guards_code=[
        "L['input'].size()[0] >= 1", "L['input'].size()[1] == 1"]))
    archive = _tampered(exported, tmp_path / "benign.pt2", edits)
    loaded = load_model(archive)
    assert loaded.format == "torch.export"
    torch.testing.assert_close(loaded.model(batch), network(batch))
    with pytest.raises(Exception, match="Guard failed"):  # the guard is in force
        loaded.model(torch.rand(2, 3, 16, 16))


def test_genuine_export_archive_loads_without_the_opt_in_whatever_its_name(
        exported: Path, tmp_path: Path, network: torch.nn.Module, batch: torch.Tensor) -> None:
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(exported.read_bytes())
    for path in (exported, renamed):
        loaded = load_model(path)
        assert loaded.format == "torch.export"
        torch.testing.assert_close(loaded.model(batch), network(batch))


def test_trusting_an_export_archive_skips_the_verification(exported: Path,
                                                          tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = _tampered(exported, tmp_path / "evil.pt2", _pickled_weight(_weight_payload(marker)))
    loaded = load_model(evil, trust_pickle=True)
    assert loaded.format == "torch.export" and marker.exists()  # the opt-in is the switch


def test_cli_refuses_a_malicious_archive_with_exit_2(exported: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    evil = _tampered(exported, tmp_path / "evil.pt2", _pickled_weight(_weight_payload(marker)))
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.random((20, 1, 16, 16), dtype=np.float32), y=np.arange(20) % 10)
    code = cli.run(["scan", str(evil), "--data", str(data), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == cli.EXIT_USAGE
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(evil) in lines[0] and "--trust-pickle" in lines[0]
    assert not marker.exists()


# -- pickles -----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".bin", ".pt2", ".safetensors",
                                    ".h5", ".keras"])
def test_raw_pickle_runs_nothing_whatever_its_name(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / f"model{suffix}"
    evil.write_bytes(pickle.dumps(_Eval(_writes(marker))))
    _refusal(evil, opt_in=suffix in (".pt", ".pth", ".pkl", ".bin", ".pt2"))
    assert not marker.exists()


def test_torch_save_of_a_malicious_object_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "model.pt"
    evil.write_bytes(_saved(_Eval(_writes(marker))))
    _refusal(evil, arch=ARCH, arch_kwargs=ARCH_KWARGS)
    assert not marker.exists()


def test_torchscript_unpickler_refuses_python_globals(tmp_path: Path,
                                                      network: torch.nn.Module) -> None:
    """TorchScript is read by PyTorch's C++ loader, which cannot import a Python object."""
    scripted = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's own notice
        torch.jit.script(network).save(str(scripted))
    marker = tmp_path / "marker"
    for member in ("data.pkl", "constants.pkl"):
        evil = _tampered(scripted, tmp_path / "evil.pt", {
            member: lambda _: pickle.dumps(_Eval(_writes(marker)), protocol=2)})
        assert "TorchScript" in _refusal(evil, opt_in=False)
        assert not marker.exists()


def test_pickled_module_needs_the_opt_in_and_then_loads(tmp_path: Path, network: torch.nn.Module,
                                                        batch: torch.Tensor) -> None:
    path = tmp_path / "pickled.pt"
    torch.save(network, path)
    _refusal(path)
    loaded = load_model(path, trust_pickle=True)
    assert loaded.format == "pickle"
    torch.testing.assert_close(loaded.model(batch), network(batch))


def test_pickle_scan_reads_imports_without_running_them(network: torch.nn.Module) -> None:
    for protocol in (2, 4):
        with zipfile.ZipFile(io.BytesIO(_saved(network.state_dict(),
                                               pickle_protocol=protocol))) as archive:
            data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        assert pickle_globals_problem(data) is None
        problem = pickle_globals_problem(pickle.dumps(_Eval("1"), protocol=protocol))
        assert problem is not None and "eval" in problem
    # a STACK_GLOBAL whose operands are not the two strings just pushed is not guessed at
    indirect = (b"\x80\x04\x8c\x08builtins\x8c\x04eval" + pickle.DUP + pickle.POP
                + pickle.STACK_GLOBAL + pickle.STOP)
    assert [op.name for op, _, _ in pickletools.genops(indirect)][-2] == "STACK_GLOBAL"
    assert "indirectly" in pickle_globals_problem(indirect)


# -- safetensors -------------------------------------------------------------------------------
def test_safetensors_with_arch_gives_the_state_dict_model(
        tmp_path: Path, network: torch.nn.Module, batch: torch.Tensor) -> None:
    from safetensors.torch import save_file

    state = tmp_path / "weights.pt"
    torch.save(network.state_dict(), state)
    weights = tmp_path / "weights.safetensors"
    save_file(network.state_dict(), weights)
    renamed = tmp_path / "weights.bin"  # recognised by its content
    renamed.write_bytes(weights.read_bytes())
    expected = load_model(state, arch=ARCH, arch_kwargs=ARCH_KWARGS).model(batch)
    for path in (weights, renamed):
        loaded = load_model(path, arch=ARCH, arch_kwargs=ARCH_KWARGS)
        assert loaded.format == "safetensors" and loaded.info["arch"] == ARCH
        torch.testing.assert_close(loaded.model(batch), expected, rtol=0, atol=0)
    assert "arch=" in _refusal(weights, opt_in=False)
    message = _refusal(weights, opt_in=False, arch=ARCH,
                       arch_kwargs={"image_size": 16, "nb_classes": 5})
    assert "do not fit" in message and "size mismatch" in message


# -- devices -----------------------------------------------------------------------------------
def test_unavailable_device_is_a_device_error(tmp_path: Path, network: torch.nn.Module) -> None:
    path = tmp_path / "weights.pt"
    torch.save(network.state_dict(), path)
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    for device, says in ((missing, "CUDA device"), ("warp9", "not a PyTorch device name")):
        message = _refusal(path, opt_in=False, arch=ARCH, arch_kwargs=ARCH_KWARGS,
                           device=device)
        assert repr(device) in message and says in message
        assert "pickle" not in message
    assert load_model(path, arch=ARCH, arch_kwargs=ARCH_KWARGS, device="cpu").format == \
        "state_dict"


# -- zip bombs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt", ".pt2", ".keras"])
def test_zip_archive_that_would_expand_far_beyond_its_size_is_not_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    monkeypatch.setattr(model_files, "MAX_ZIP_INFLATION_BYTES", 2**20)
    bomb = tmp_path / f"bomb{suffix}"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", bytes(8 * 2**20))
    assert bomb.stat().st_size < 2**16

    def must_not_read(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the archive was read")

    monkeypatch.setattr(torch, "load", must_not_read)
    assert "expand" in _refusal(bomb, opt_in=False)


def test_stored_archives_are_not_counted_as_expanding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, network: torch.nn.Module) -> None:
    path = tmp_path / "weights.pt"
    torch.save(network.state_dict(), path)  # tensors are stored uncompressed
    monkeypatch.setattr(model_files, "MAX_ZIP_INFLATION_BYTES", 0)
    assert load_model(path, arch=ARCH, arch_kwargs=ARCH_KWARGS).format == "state_dict"


# -- Keras -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_lambda_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Keras files with a Lambda layer whose function writes a marker: name -> (file, marker)."""
    keras = pytest.importorskip("keras")
    root = tmp_path_factory.mktemp("keras")
    made: dict[str, tuple[Path, Path]] = {}
    flavours = [("keras", keras)]
    try:
        import tf_keras

        flavours.append(("tf_keras", tf_keras))
    except ImportError:
        pass
    for flavour, api in flavours:
        for suffix in (".h5", ".keras"):
            marker = root / f"marker_{flavour}{suffix}"
            inputs = api.Input((4,))
            hidden = api.layers.Lambda(lambda x, m: (open(m, "w").write("ran"), x)[1],
                                       arguments={"m": str(marker)})(inputs)
            model = api.Model(inputs, api.layers.Dense(2)(hidden))
            path = root / f"{flavour}_lambda{suffix}"
            model.save(path)
            marker.unlink(missing_ok=True)  # building the model ran the function
            made[f"{flavour}{suffix}"] = (path, marker)
    return made


@pytest.mark.parametrize("name", ["keras.h5", "keras.keras", "tf_keras.h5", "tf_keras.keras"])
def test_keras_lambda_layers_are_refused_before_deserialisation(
        keras_lambda_files: dict[str, tuple[Path, Path]], name: str) -> None:
    if name not in keras_lambda_files:
        pytest.skip("tf_keras is not installed")
    path, marker = keras_lambda_files[name]
    if name == "tf_keras.h5":
        # the hole the old fallback opened: tf_keras builds the Lambda from its bytecode
        import tf_keras

        tf_keras.models.load_model(path, compile=False)
        assert marker.exists()
        marker.unlink()
    assert "Lambda" in _refusal(path)
    assert not marker.exists()


def test_keras_safe_mode_is_not_bypassed_by_the_tf_keras_fallback(
        keras_lambda_files: dict[str, tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even if the architecture check missed a Lambda, Keras' safe-mode refusal is final."""
    if "tf_keras.h5" not in keras_lambda_files:
        pytest.skip("tf_keras is not installed")
    path, marker = keras_lambda_files["tf_keras.h5"]
    monkeypatch.setattr(keras_files, "_keras_code_in", lambda config: None)
    assert "safe mode" in _refusal(path)
    assert not marker.exists()


def test_trusting_a_keras_file_runs_its_lambda(
        keras_lambda_files: dict[str, tuple[Path, Path]]) -> None:
    path, marker = keras_lambda_files["keras.keras"]
    loaded = load_model(path, trust_pickle=True)
    assert loaded.framework == "keras" and marker.exists()
    marker.unlink()
