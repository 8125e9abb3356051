"""End-to-end scans of PyTorch models: detection, agreement of the two modes, safety, errors."""

import json

import numpy as np
import pytest
import torch

import neuralcleanse as nc
from neuralcleanse.backends.torch.architectures import MNIST_BADNET_PREPROCESSING, MnistBadNet
from neuralcleanse.core.errors import InputError
from torch_models import digits, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def badnet(shared_data):
    model = MnistBadNet()
    state = torch.load(shared_data / "badnet-MNIST.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    data = np.load(shared_data / "mnist_test_first1000.npz")
    return model.eval(), data["x"], data["y"]


def scan_badnet(badnet, **options):
    model, x, y = badnet
    return nc.scan(model, x, y, output="probabilities", preprocessing=MNIST_BADNET_PREPROCESSING,
                   progress=False, **options)


@pytest.fixture(scope="module")
def clean_digits():
    x, y = digits(upsample=2)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train_idx, test_idx = order[:1300], order[1300:]
    model = train(x[train_idx], y[train_idx], seed=1)
    return model, x[test_idx], y[test_idx]


def test_third_party_badnet_flags_label_1_only(badnet):
    result = scan_badnet(badnet, steps=30, mini_batches=4)
    assert result.flagged_labels == [1]
    assert result.anomaly_index[1] > 2
    assert np.all(np.delete(result.anomaly_index, 1) <= 2)
    # flagged for the right reason: the reversed mask sits on the real trigger (rows/cols 23-27)
    mask = result.label(1).mask
    assert mask.shape == (28, 28)
    assert mask[20:, 20:].sum() / mask.sum() > 0.5
    assert result.label(1).attack_success_rate >= 0.99
    assert result.norms[1] == pytest.approx(result.label(1).mask.sum())


def test_bf16_finds_the_badnet_trigger_as_fp32_does(badnet):
    fp32 = scan_badnet(badnet, steps=30, mini_batches=4, verdict="paper")
    bf16 = scan_badnet(badnet, steps=30, mini_batches=4, verdict="paper", precision="bf16")
    assert bf16.flagged_labels == fp32.flagged_labels == [1]
    assert bf16.config["precision"] == "bf16" and fp32.config["precision"] == "fp32"
    mask = bf16.label(1).mask
    assert mask.dtype == fp32.label(1).mask.dtype == np.float32
    assert mask[20:, 20:].sum() / mask.sum() > 0.5
    # the same trigger, found in a different number format: norms close, not equal
    assert bf16.norms[1] == pytest.approx(fp32.norms[1], rel=0.25)
    assert not np.array_equal(bf16.norms, fp32.norms)


def test_bf16_runs_the_model_in_bfloat16_and_repeats_for_a_seed(clean_digits):
    model, x, y = clean_digits
    seen: list[torch.dtype] = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    hook = conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        runs = [nc.scan(model, x, y, steps=3, mini_batches=2, progress=False, verdict="paper",
                        precision=p) for p in ("bf16", "bf16", "fp32")]
    finally:
        hook.remove()
    assert torch.bfloat16 in seen and torch.float32 in seen
    np.testing.assert_array_equal(runs[0].norms, runs[1].norms)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_clean_model_flags_nothing(clean_digits):
    model, x, y = clean_digits
    result = nc.scan(model, x, y, steps=60, mini_batches=4, progress=False)
    assert result.flagged_labels == []
    assert np.nanmax(result.anomaly_index) <= 2
    assert all(r.converged for r in result.labels)


def test_batched_and_one_label_give_the_same_triggers(badnet):
    batched = scan_badnet(badnet, steps=3, mini_batches=2, early_stop=False)
    single = scan_badnet(badnet, steps=3, mini_batches=2, early_stop=False, label_batch=1)
    np.testing.assert_allclose(batched.masks, single.masks, atol=1e-3)
    np.testing.assert_allclose(batched.patterns, single.patterns, atol=0.3)  # [0, 255] range
    np.testing.assert_allclose(batched.norms, single.norms, rtol=1e-3)


def test_batched_and_one_label_agree_after_a_full_run(clean_digits):
    model, x, y = clean_digits
    opts = dict(steps=40, mini_batches=3, progress=False, patience=2, early_stop_patience=5)
    batched = nc.scan(model, x, y, label_batch=4, **opts)  # refills the stack as labels stop
    single = nc.scan(model, x, y, label_batch=1, **opts)
    assert batched.flagged_labels == single.flagged_labels
    assert [r.steps for r in batched.labels] == [r.steps for r in single.labels]
    assert any(r.steps < 40 for r in batched.labels)  # early stop did happen
    np.testing.assert_allclose(batched.norms, single.norms, rtol=1e-2)


def test_scan_leaves_the_model_exactly_as_it_was(clean_digits):
    model, x, y = clean_digits
    model.train()
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    try:
        nc.scan(model, x, y, steps=2, mini_batches=1, progress=False)
        assert model.training and all(m.training for m in model.modules())
        assert [p.requires_grad for p in model.parameters()] == flags
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k])

        def interrupt(_result):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            nc.scan(model, x, y, steps=2, mini_batches=1, progress=False,
                    on_label_done=interrupt)
        assert model.training
        assert [p.requires_grad for p in model.parameters()] == flags
    finally:
        model[0].weight.requires_grad_(True)
        model.eval()


def test_result_json_round_trip_and_shapes(clean_digits, tmp_path):
    model, x, y = clean_digits
    result = nc.scan(model, x, y, steps=2, mini_batches=1, labels=[0, 3], progress=False)
    assert result.masks.shape == (2, 16, 16) and result.patterns.shape == (2, 1, 16, 16)
    assert np.isnan(result.norms[1]) and result.norms.shape == (10,)
    assert result.masks.min() >= 0 and result.masks.max() <= 1
    assert result.patterns.min() >= 0 and result.patterns.max() <= 1
    path = tmp_path / "r.json"
    result.to_json(path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and [d["label"] for d in data["labels"]] == [0, 3]
    back = nc.ScanResult.from_json(path)
    np.testing.assert_array_equal(back.masks, result.masks)
    np.testing.assert_array_equal(back.anomaly_index, result.anomaly_index)
    assert back.flagged_labels == result.flagged_labels and back.config == result.config


def test_same_seed_same_result_and_seed_matters(clean_digits):
    model, x, y = clean_digits
    a = nc.scan(model, x, y, steps=2, mini_batches=1, labels=[5], progress=False)
    b = nc.scan(model, x, y, steps=2, mini_batches=1, labels=[5], progress=False)
    c = nc.scan(model, x, y, steps=2, mini_batches=1, labels=[5], seed=1, progress=False)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.allclose(a.masks, c.masks)


def test_probabilities_declared_as_logits_warns(badnet):
    model, x, y = badnet
    with pytest.warns(UserWarning, match="look like probabilities"):
        nc.scan(model, x[:64], y[:64], preprocessing=MNIST_BADNET_PREPROCESSING, steps=1,
                mini_batches=1, labels=[0], progress=False)


@pytest.mark.parametrize("mutate,message", [
    (lambda x, y: (x[:, :, :5], y), "could not run on inputs of shape"),
    (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), y), "NaN"),
    (lambda x, y: (x, np.where(np.arange(len(y)) == 3, 12, y)), "labels must be < 10"),
    (lambda x, y: (x, y[:-1]), "has 400 images but y has 399"),
    (lambda x, y: (x[:0], y[:0]), "empty"),
    (lambda x, y: (x[:10], y[:10]), "fewer than one batch"),
    (lambda x, y: (x[:, 0, 0], y), "batch of images"),
    (lambda x, y: (x, y.astype(float) + 0.5), "whole-number"),
])
def test_bad_inputs_raise_clear_errors(clean_digits, mutate, message):
    model, x, y = clean_digits
    bad_x, bad_y = mutate(x[:400], y[:400])
    with pytest.raises(ValueError, match=message):
        nc.scan(model, bad_x, bad_y, steps=1, mini_batches=1, progress=False)


def test_bad_labels_and_options(clean_digits):
    model, x, y = clean_digits
    with pytest.raises(ValueError, match="outside clip_values"):
        nc.scan(model, x * 300, y, clip_values=(0, 1), progress=False)
    with pytest.raises(ValueError, match="labels must be a non-empty subset"):
        nc.scan(model, x, y, labels=[11], progress=False)
    with pytest.raises(ValueError, match="unknown scan option"):
        nc.scan(model, x, y, stpes=3)
    with pytest.raises(TypeError, match="unsupported model type"):
        nc.scan(object(), x, y)


def test_one_hot_labels_and_grayscale_without_channel_axis(clean_digits):
    model, x, y = clean_digits
    one_hot = np.eye(10)[y]
    a = nc.scan(model, x[:, 0], one_hot, steps=2, mini_batches=1, labels=[2], progress=False)
    b = nc.scan(model, x, y, steps=2, mini_batches=1, labels=[2], progress=False)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_memory_budget_bounds_the_label_stack(clean_digits):
    from neuralcleanse.backends.torch.classifier import TorchClassifier
    from neuralcleanse.search.reverse import resolve_label_batch

    model, x, y = clean_digits
    clf = TorchClassifier(model, x.shape[1:])
    per_label_mb = clf.activation_bytes_per_image() * 32 / 2**20
    assert per_label_mb > 0
    cfg = nc.ScanConfig(memory_budget_mb=3.5 * per_label_mb)
    assert resolve_label_batch(clf, cfg, 10) == 3
    assert resolve_label_batch(clf, cfg.replace(memory_budget_mb=per_label_mb / 10), 10) == 1
    assert resolve_label_batch(clf, cfg.replace(label_batch=7), 10) == 7
    # TorchScript modules refuse module hooks; the estimate must still work and agree
    scripted = TorchClassifier(torch.jit.script(model), x.shape[1:])
    assert scripted.activation_bytes_per_image() == clf.activation_bytes_per_image()


def test_restarts_report_median_norms_and_verdict_stability(clean_digits):
    model, x, y = clean_digits
    opts = dict(steps=3, mini_batches=1, labels=[0, 1, 2], progress=False)
    runs = [nc.scan(model, x, y, seed=s, **opts) for s in (4, 5, 6)]
    combined = nc.scan(model, x, y, seed=4, restarts=3, **opts)
    expected = np.median([r.norms for r in runs], axis=0)
    np.testing.assert_allclose(combined.norms, expected, rtol=1e-6)
    info = combined.restarts
    assert info["n"] == 3 and info["seeds"] == [4, 5, 6]
    np.testing.assert_allclose(info["norms"], [r.norms[:3] for r in runs], rtol=1e-5)
    for label in (0, 1, 2):
        assert info["flag_counts"][str(label)] == sum(label in r.flagged_labels for r in runs)
    spread = np.ptp([r.anomaly_index[:3] for r in runs], axis=0)
    np.testing.assert_allclose(info["anomaly_index_spread"], spread, atol=1e-5)
    assert info["label_steps"] == [sum(lab.steps for lab in r.labels) for r in runs]
    assert len(info["wall_seconds"]) == 3 and all(t > 0 for t in info["wall_seconds"])
    with pytest.raises(ValueError, match="restarts"):
        nc.scan(model, x, y, restarts=0, **opts)
    with pytest.raises(InputError, match="seed \\+ restarts - 1"):
        nc.scan(model, x, y, seed=2**32 - 2, restarts=3, **opts)


class _ViewFlatten(torch.nn.Module):
    """A CNN that flattens with ``view``, which fails on channels-last activations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


def test_channels_last_is_used_only_where_the_model_accepts_it():
    from neuralcleanse.backends.torch.classifier import TorchClassifier
    from neuralcleanse.backends.torch.session import channels_last_helps as _channels_last_helps

    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    strict = TorchClassifier(_ViewFlatten().eval(), (3, 8, 8))
    with pytest.raises(RuntimeError):
        strict.forward(x.contiguous(memory_format=torch.channels_last))
    assert not _channels_last_helps(strict, x)
    flexible = TorchClassifier(torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 5)).eval(), (3, 8, 8))
    assert _channels_last_helps(flexible, x)
    # the model that refuses channels-last still scans, in the default layout
    images = np.random.default_rng(0).random((64, 3, 8, 8), dtype=np.float32)
    result = nc.scan(strict.model, images, np.arange(64) % 5, steps=2, mini_batches=1,
                     labels=[0, 1], progress=False)
    assert len(result.labels) == 2 and np.isfinite(result.norms[:2]).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no GPU is present")
def test_asking_for_a_missing_gpu_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        nc.scan(model, np.zeros((40, 1, 4, 4), np.float32), np.arange(40) % 3, device="cuda",
                progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_scan_on_the_gpu_leaves_the_cpu_model_where_it_is(badnet):
    model, _, _ = badnet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = scan_badnet(badnet, steps=30, mini_batches=4, device="cuda")
    assert result.flagged_labels == [1]
    assert result.model_info["device"].startswith("cuda")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
