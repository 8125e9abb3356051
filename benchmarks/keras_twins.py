"""Keras against PyTorch on exact twins: the same network, the same weights, the same scan.

Each pair is a Keras 3 model (TensorFlow backend, channels last) and a PyTorch model built from
it: the Keras kernels are copied into torch (convolution kernels HWIO -> OIHW, Dense kernels
transposed, and the first Dense layer's rows permuted from the (H, W, C) flattening order to
torch's (C, H, W)). The twins' logits are checked to agree on random inputs before anything is
timed. Then both are scanned in one process, interleaved (keras, torch, keras, torch ... with
``--repeats``; the best time counts) with identical settings and a FIXED amount of work: every
label runs ``--steps`` steps (``early_stop=False``) of ``--mini-batches`` mini-batches of 32
images, all 10 labels stacked in one search, the paper's verdict rule (no confirmation pass), so
images/s compare directly. Other load on the machine hits both frameworks alike. The first Keras
scan of a pair also traces its step into a graph (once per classifier and settings; recorded as
``keras_first_scan_s``); the best time is a later scan's.

The weights are a seeded random initialisation (Keras' defaults, seed 0): the throughput of a
network does not depend on its weights, and the norms are compared between twins, not against
any reference. The clean images are seeded uniform noise in [0, 1].

Shapes (all with 10 classes, ReLU after every hidden layer, "valid" convolutions):

* ``lenet_max``: the paper's MNIST LeNet-5: conv 6@5x5, max-pool 2, conv 16@5x5, max-pool 2,
  dense 120, 84, 10 on 28x28x1;
* ``lenet_avg``: the same with average pooling;
* ``lenet_3x3``: the same with 3x3 convolutions;
* ``lenet_rgb``: the same on 32x32x3 inputs;
* ``mnist_cnn``: a third-party-style Keras MNIST CNN: conv 16@5x5, max-pool, conv 32@5x5,
  max-pool, dense 512, dense 10 on 28x28x1;
* ``lenet_nchw``: ``lenet_max`` with ``data_format="channels_first"`` layers on 1x28x28 inputs
  (TensorFlow's CPU convolutions are made for channels-last; this shows what the other layout
  costs).

Per pair: images/s of each framework, the keras/torch ratio, label-steps, the largest relative
difference of the norms, the bare model's forward+backward throughput (to the input, the scan's
batch of labels x 32 images, model only) in each framework, and the thread settings.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/keras_twins.py [--pairs lenet_max,...]
        [--steps 12] [--mini-batches 8] [--repeats 2] [--threads N]
        [--out benchmarks/results/keras_twins.json]

Prints a Markdown table and writes the JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

import neuralcleanse as nc  # noqa: E402
from neuralcleanse.backends.tensorflow.classifier import KerasClassifier  # noqa: E402
from neuralcleanse.backends.torch.classifier import TorchClassifier  # noqa: E402
from neuralcleanse.backends.torch.session import channels_last_helps, to_channels_last  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "keras_twins.json"
N_CLASSES = 10
BATCH = 32

#: name -> (image H, W, C; conv channels; kernel size; pooling; dense widths; Keras layout)
PAIRS: dict[str, tuple[tuple[int, int, int], tuple[int, ...], int, str, tuple[int, ...], str]] = {
    "lenet_max": ((28, 28, 1), (6, 16), 5, "max", (120, 84), "channels_last"),
    "lenet_avg": ((28, 28, 1), (6, 16), 5, "avg", (120, 84), "channels_last"),
    "lenet_3x3": ((28, 28, 1), (6, 16), 3, "max", (120, 84), "channels_last"),
    "lenet_rgb": ((32, 32, 3), (6, 16), 5, "max", (120, 84), "channels_last"),
    "mnist_cnn": ((28, 28, 1), (16, 32), 5, "max", (512,), "channels_last"),
    "lenet_nchw": ((28, 28, 1), (6, 16), 5, "max", (120, 84), "channels_first"),
}


def keras_net(image: tuple[int, int, int], convs: tuple[int, ...], kernel: int, pool: str,
              dense: tuple[int, ...], data_format: str = "channels_last", seed: int = 0) -> Any:
    """A Keras CNN: (conv, ReLU, pool) per entry of ``convs``, then ReLU dense layers.

    ``image`` is (H, W, C); the model takes (C, H, W) when ``data_format`` is channels first.
    """
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    pooling = layers.MaxPooling2D if pool == "max" else layers.AveragePooling2D
    h, w, c = image
    stack: list[Any] = [keras.Input((c, h, w) if data_format == "channels_first" else image)]
    for channels in convs:
        stack += [layers.Conv2D(channels, kernel, activation="relu", data_format=data_format),
                  pooling(2, data_format=data_format)]
    stack.append(layers.Flatten(data_format=data_format))
    stack += [layers.Dense(width, activation="relu") for width in dense]
    stack.append(layers.Dense(N_CLASSES))
    return keras.Sequential(stack)


def torch_twin(model: Any) -> torch.nn.Module:
    """The PyTorch (NCHW) twin of a Sequential Keras CNN made of the layers above, same weights.

    Convolution kernels go from Keras' (H, W, in, out) to torch's (out, in, H, W); Dense kernels
    are transposed; the first Dense layer after ``Flatten`` gets its input rows reordered from
    Keras' flattening order (h, w, c) to torch's (c, h, w). Keras flattens in (h, w, c) order in
    both layouts: a channels-first ``Flatten`` moves the channels last before it flattens.
    """
    modules: list[torch.nn.Module] = []
    feature_shape: tuple[int, ...] | None = None  # (H, W, C) entering Flatten
    flattened = False
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            kernel, bias = layer.get_weights()
            conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2])
            conv.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
            conv.bias.data = torch.from_numpy(bias.copy())
            modules += [conv, torch.nn.ReLU()]
        elif kind in ("MaxPooling2D", "AveragePooling2D"):
            pool = torch.nn.MaxPool2d if kind == "MaxPooling2D" else torch.nn.AvgPool2d
            modules.append(pool(layer.pool_size, layer.strides))
        elif kind == "Flatten":
            dims = [int(d) for d in layer.input.shape[1:]]
            feature_shape = tuple(dims if layer.data_format == "channels_last"
                                  else dims[1:] + dims[:1])
            modules.append(torch.nn.Flatten())
        elif kind == "Dense":
            kernel, bias = layer.get_weights()
            if not flattened and feature_shape is not None:
                h, w, c = feature_shape
                kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
                flattened = True
            dense = torch.nn.Linear(kernel.shape[0], kernel.shape[1])
            dense.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.T))
            dense.bias.data = torch.from_numpy(bias.copy())
            modules.append(dense)
            if layer.activation is keras.activations.relu:
                modules.append(torch.nn.ReLU())
        else:
            raise ValueError(f"torch_twin does not know Keras layer {kind}")
    return torch.nn.Sequential(*modules).eval()


def channels_first(model: Any) -> bool:
    """Whether a Keras model made by :func:`keras_net` takes (C, H, W) images."""
    return model.layers[0].data_format == "channels_first"


def to_torch_layout(model: Any, x: np.ndarray) -> np.ndarray:
    """Images as the Keras model takes them, in the twin's (N, C, H, W) layout."""
    return x if channels_first(model) else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def logits_gap(model: Any, twin: torch.nn.Module, n: int = 64, seed: int = 1) -> float:
    """Largest |keras - torch| logit difference on random inputs, relative to the largest logit."""
    x = np.random.default_rng(seed).random((n, *model.input_shape[1:]), dtype=np.float32)
    k_out = np.asarray(model(x, training=False))
    with torch.no_grad():
        t_out = twin(torch.from_numpy(to_torch_layout(model, x))).numpy()
    return float(np.abs(k_out - t_out).max() / max(np.abs(k_out).max(), 1e-12))


def timed(fn: Callable[[], None], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after two warm-up calls)."""
    fn()
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def bare_rates(model: Any, twin: torch.nn.Module, batch: int, seconds: float,
               repeats: int) -> tuple[float, float]:
    """Images/s of each model alone, forward + backward to the input, interleaved, best of.

    About ``2 * seconds`` per framework, in alternating windows; the best window counts.
    """
    shape = model.input_shape[1:]
    x_k = tf.constant(np.random.default_rng(2).random((batch, *shape), dtype=np.float32))

    @tf.function
    def keras_pass(x: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = model(x, training=False)
            loss = tf.reduce_sum(tf.nn.log_softmax(out)[:, 1])
        return tape.gradient(loss, x)

    x_t = torch.from_numpy(np.ascontiguousarray(to_torch_layout(model, x_k.numpy())))
    clf = TorchClassifier(twin, tuple(x_t.shape[1:]), output="logits")
    if channels_last_helps(clf, x_t[:2]):  # the layout the scan feeds the torch model
        x_t = to_channels_last(x_t)
    for p in twin.parameters():
        p.requires_grad_(False)

    def torch_pass() -> None:
        xx = x_t.detach().requires_grad_(True)
        torch.log_softmax(twin(xx), dim=-1)[:, 1].sum().backward()

    def keras_once() -> None:
        keras_pass(x_k).numpy()

    # several short windows, alternating: one burst of other load cannot decide a framework's rate
    best_k = best_t = 0.0
    windows = max(3, 2 * repeats)
    for _ in range(windows):
        best_k = max(best_k, batch * timed(keras_once, 2 * seconds / windows))
        best_t = max(best_t, batch * timed(torch_pass, 2 * seconds / windows))
    return best_k, best_t


def scan_once(clf: Any, x: np.ndarray, y: np.ndarray, config: nc.ScanConfig
              ) -> tuple[float, nc.ScanResult]:
    start = time.perf_counter()
    result = nc.scan(clf, x, y, config=config)
    return time.perf_counter() - start, result


def run_pair(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build, check and scan one twin pair; returns its row."""
    shape, convs, kernel, pool, dense, data_format = PAIRS[name]
    model = keras_net(shape, convs, kernel, pool, dense, data_format)
    twin = torch_twin(model)
    gap = logits_gap(model, twin)
    assert gap < 1e-4, f"{name}: the twins' logits differ by {gap:.2e} (relative)"
    rng = np.random.default_rng(0)
    x = rng.random((args.images, *model.input_shape[1:]), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, args.images)
    x_t = to_torch_layout(model, x)
    config = nc.ScanConfig(steps=args.steps, early_stop=False, mini_batches=args.mini_batches,
                           batch_size=BATCH, label_batch=N_CLASSES, verdict="paper",
                           progress=False, seed=0)
    k_clf = KerasClassifier(model, output="logits", channels_first=channels_first(model),
                            clip_values=(0.0, 1.0))
    t_clf = TorchClassifier(twin, x_t.shape[1:], output="logits", clip_values=(0.0, 1.0))
    k_times, t_times = [], []
    k_res = t_res = None
    for _ in range(args.repeats):
        wall, k_res = scan_once(k_clf, x, y, config)
        k_times.append(wall)
        wall, t_res = scan_once(t_clf, x_t, y, config)
        t_times.append(wall)
    assert k_res is not None and t_res is not None
    label_steps = int(sum(r.steps for r in k_res.labels))
    assert label_steps == int(sum(r.steps for r in t_res.labels))
    images = label_steps * args.mini_batches * BATCH
    k_norms, t_norms = np.asarray(k_res.norms), np.asarray(t_res.norms)
    bare_k, bare_t = bare_rates(model, twin, N_CLASSES * BATCH, args.bare_seconds,
                                args.repeats)
    k_rate, t_rate = images / min(k_times), images / min(t_times)
    return {
        "pair": name, "input_shape": list(model.input_shape[1:]), "keras_layout": data_format,
        "convs": list(convs), "kernel": kernel, "pool": pool, "dense": list(dense),
        "logits_max_rel_diff": gap,
        "label_steps": label_steps, "images": images,
        "keras_wall_s": [round(t, 3) for t in k_times],
        "torch_wall_s": [round(t, 3) for t in t_times],
        "keras_images_per_s": k_rate, "torch_images_per_s": t_rate,
        "keras_over_torch": k_rate / t_rate,
        "keras_bare_images_per_s": bare_k, "torch_bare_images_per_s": bare_t,
        "keras_bare_over_torch_bare": bare_k / bare_t,
        "keras_share_of_bare": k_rate / bare_k, "torch_share_of_bare": t_rate / bare_t,
        "keras_traces": k_clf.traces,
        "keras_first_scan_s": k_times[0],
        "norms_max_rel_diff": float(np.max(np.abs(k_norms - t_norms)
                                           / np.maximum(np.abs(t_norms), 1e-12))),
        "keras_norms": [round(float(v), 3) for v in k_norms],
        "torch_norms": [round(float(v), 3) for v in t_norms],
        "keras_flagged": k_res.flagged_labels, "torch_flagged": t_res.flagged_labels,
    }


def threads() -> dict[str, Any]:
    return {"torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "note": "TensorFlow's 0 means its default: one thread per core"}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| pair | input | label-steps | keras img/s | torch img/s | keras/torch "
             "| bare keras img/s | bare torch img/s | bare k/t | keras/bare | torch/bare "
             "| norms max rel diff |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['pair']} | {'x'.join(map(str, r['input_shape']))} | {r['label_steps']} "
            f"| {r['keras_images_per_s']:.0f} | {r['torch_images_per_s']:.0f} "
            f"| {r['keras_over_torch']:.2f} | {r['keras_bare_images_per_s']:.0f} "
            f"| {r['torch_bare_images_per_s']:.0f} | {r['keras_bare_over_torch_bare']:.2f} "
            f"| {r['keras_share_of_bare']:.0%} | {r['torch_share_of_bare']:.0%} "
            f"| {r['norms_max_rel_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=",".join(PAIRS),
                        help=f"comma-separated, from {', '.join(PAIRS)}")
    parser.add_argument("--steps", type=int, default=12, help="steps of every label")
    parser.add_argument("--mini-batches", type=int, default=8)
    parser.add_argument("--images", type=int, default=1000, help="clean images (random)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bare-seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads and TensorFlow intra-op threads (default: theirs)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    names = [n for n in args.pairs.split(",") if n]
    unknown = set(names) - set(PAIRS)
    if unknown:
        parser.error(f"unknown pairs {sorted(unknown)}; choose from {', '.join(PAIRS)}")
    if args.threads is not None:  # before TensorFlow runs its first op
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        torch.set_num_threads(args.threads)
    rows = []
    start = time.perf_counter()
    for name in names:
        rows.append(run_pair(name, args))
        r = rows[-1]
        print(f"{name}: keras {r['keras_images_per_s']:.0f} img/s, torch "
              f"{r['torch_images_per_s']:.0f} img/s ({r['keras_over_torch']:.2f}), traces "
              f"{r['keras_traces']}", flush=True)
    out = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "cpu_count": os.cpu_count(), "tensorflow": tf.__version__,
                       "keras": keras.__version__, "torch": torch.__version__, **threads()},
           "settings": {"steps": args.steps, "mini_batches": args.mini_batches,
                        "batch_size": BATCH, "label_batch": N_CLASSES, "early_stop": False,
                        "images": args.images, "repeats": args.repeats,
                        "weights": "seeded random init (Keras defaults, seed 0)",
                        "data": "seeded uniform noise in [0, 1]"},
           "pairs": rows, "total_s": time.perf_counter() - start}
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} ({out['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
