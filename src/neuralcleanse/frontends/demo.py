"""``neuralcleanse demo``: plant a backdoor, find it, remove it, and write the report.

Everything runs offline on scikit-learn's bundled 8x8 digits, upsampled to 16x16:

1. a small CNN is trained on digits of which 10 % carry a small white square in the
   bottom-right corner and are relabelled to the target label (a BadNets-style backdoor);
2. the model is scanned with Neural Cleanse on a separate set of clean digits;
3. the flagged label is mitigated by unlearning;
4. the report (JSON, HTML, trigger images) is written, together with the planted trigger's
   attack success rate before and after on held-out test digits, and a stamped example of each
   flagged or suspicious label with the model's prediction before and after unlearning.

It takes well under two minutes on two CPU cores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from neuralcleanse.core.config import ScanConfig
from neuralcleanse.io.digits import digits_images, stamp_square
from neuralcleanse.io.report import STAMPED_EXAMPLES, ReportPaths, summary_table, write_report

#: The planted backdoor: images stamped with the trigger are classified as this label.
TARGET_LABEL = 7
#: Side of the upsampled digits.
IMAGE_SIZE = 16
#: The trigger: a white square of this side, one pixel away from the bottom-right corner.
TRIGGER_SIZE = 3
#: Share of the training set that is poisoned.
POISON_FRACTION = 0.1
#: Search settings of the demo's scan: the paper's, with fewer and shorter steps and a quicker
#: early stop, so that the demo stays well under two minutes on two CPU cores.
DEMO_SCAN = dict(steps=150, mini_batches=8, batch_size=32, early_stop_patience=10)


@dataclass
class DemoData:
    """The digits split three ways, images ``(N, 1, 16, 16)`` in [0, 1]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_clean: np.ndarray
    y_clean: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_splits(seed: int = 0) -> DemoData:
    """Digits upsampled to 16x16 and split into training, clean (scan) and test sets."""
    from sklearn.model_selection import train_test_split

    images, labels = digits_images(upsample=IMAGE_SIZE // 8)
    x_train, x_rest, y_train, y_rest = train_test_split(
        images, labels, test_size=0.4, random_state=seed, stratify=labels)
    x_clean, x_test, y_clean, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest)
    return DemoData(x_train, y_train, x_clean, y_clean, x_test, y_test)


def stamp_trigger(x: np.ndarray) -> np.ndarray:
    """Copy of ``x`` (``(N, 1, H, W)``) with the white square planted near the corner."""
    return stamp_square(x, TRIGGER_SIZE, margin=1)


def planted_trigger_entry() -> dict[str, Any]:
    """The planted trigger as a report's ``model_info["known_trigger"]`` (shown in the HTML).

    The mask is where :func:`stamp_trigger` writes (1 there, 0 elsewhere) and the pattern is
    white (1.0, the top of the digits' value range [0, 1]).
    """
    from neuralcleanse.io.known_trigger import known_trigger_entry

    blank = np.zeros((1, 1, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    mask = stamp_trigger(blank)[0, 0]
    pattern = np.ones((1, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    return known_trigger_entry(mask, pattern, label=TARGET_LABEL)


def poison(x: np.ndarray, y: np.ndarray, seed: int, fraction: float = POISON_FRACTION
           ) -> tuple[np.ndarray, np.ndarray]:
    """Add stamped copies of ``fraction`` of the images of other labels, labelled as the target."""
    rng = np.random.default_rng([seed, 31])
    candidates = np.flatnonzero(y != TARGET_LABEL)
    chosen = rng.choice(candidates, size=int(round(fraction * len(x))), replace=False)
    x_out = np.concatenate([x, stamp_trigger(x[chosen])])
    y_out = np.concatenate([y, np.full(len(chosen), TARGET_LABEL, dtype=y.dtype)])
    return x_out, y_out


def train_backdoored_model(data: DemoData, seed: int, epochs: int = 30,
                           poison_fraction: float = POISON_FRACTION) -> Any:
    """Train ``small_cnn`` on the poisoned training set (deterministic for a seed).

    ``poison_fraction=0`` trains a clean model on the same data.
    """
    from neuralcleanse.backends.torch.architectures import small_cnn
    from neuralcleanse.backends.torch.training import seeded, train_classifier

    seeded(seed)
    model = small_cnn(in_channels=1, nb_classes=10, image_size=IMAGE_SIZE)
    x, y = poison(data.x_train, data.y_train, seed, poison_fraction)
    return train_classifier(model, x, y, seed=seed, epochs=epochs)


def _rates(predict: Any, data: DemoData) -> tuple[float, float]:
    """Clean test accuracy and the planted trigger's attack success rate."""
    accuracy = float(np.mean(predict(data.x_test).argmax(1) == data.y_test))
    others = data.y_test != TARGET_LABEL
    stamped = stamp_trigger(data.x_test[others])
    asr = float(np.mean(predict(stamped).argmax(1) == TARGET_LABEL))
    return accuracy, asr


def run_demo(out: str | Path, seed: int = 0, console: Console | None = None) -> ReportPaths:
    """Run the whole demo and write its report into ``out``.

    Args:
        out: Folder for the report, the models and the clean data.
        seed: Seed of the split, the poisoning, the training, the scan and the mitigation.
        console: Where to print progress (default: a new rich console).

    Returns:
        The paths of the report files.
    """
    from neuralcleanse.backends.torch.training import torch_threads

    console = console or Console()
    started = time.perf_counter()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The demo's network is tiny: one thread is as fast as several and does not slow down
    # badly when other programs share the cores.
    with torch_threads(1):
        return _run(out_dir, seed, console, started)


def _run(out_dir: Path, seed: int, console: Console, started: float) -> ReportPaths:
    from neuralcleanse.backends import wrap_model
    from neuralcleanse.frontends.api import mitigate, scan
    from neuralcleanse.mitigation.examples import examples_after, stamped_examples

    console.print(f"[bold]1/4[/] planting a backdoor: {POISON_FRACTION:.0%} of the training "
                  f"digits get a {TRIGGER_SIZE}x{TRIGGER_SIZE} white square and label "
                  f"{TARGET_LABEL}; training a small CNN")
    data = load_digits_splits(seed)
    model = train_backdoored_model(data, seed)
    clf = wrap_model(model, input_shape=data.x_clean.shape[1:])
    acc_before, asr_before = _rates(clf.predict, data)
    console.print(f"    clean test accuracy {acc_before:.1%}, the planted trigger sends "
                  f"{asr_before:.1%} of other digits to label {TARGET_LABEL}")
    model_path = out_dir / "backdoored_model.pt"
    clf.save(str(model_path))
    np.savez_compressed(out_dir / "clean_digits.npz", x=data.x_clean, y=data.y_clean)

    console.print(f"[bold]2/4[/] scanning all 10 labels with Neural Cleanse on "
                  f"{len(data.x_clean)} clean digits")
    config = ScanConfig(seed=seed, progress=console.is_terminal, **DEMO_SCAN)
    result = scan(model, data.x_clean, data.y_clean, config=config)
    result.model_info.update(path=str(model_path), format="state_dict",
                             arch="neuralcleanse.backends.torch.architectures:small_cnn",
                             arch_kwargs={"image_size": IMAGE_SIZE})
    result.data_info.update(source="scikit-learn digits (8x8, upsampled to 16x16)",
                            format="demo split")
    result.model_info["known_trigger"] = planted_trigger_entry()
    examples = stamped_examples(clf, data.x_clean, data.y_clean, result)
    if examples:
        result.data_info[STAMPED_EXAMPLES] = examples
    console.print(summary_table(result))
    console.print(result.summary(), style="bold red" if result.flagged_labels else "bold green")

    mitigation_dict = None
    acc_after, asr_after = None, None
    if result.flagged_labels:
        console.print(f"[bold]3/4[/] mitigating label(s) {result.flagged_labels} by unlearning")
        mitigated = mitigate(model, data.x_clean, data.y_clean, result, method="unlearning",
                             seed=seed)
        repaired_path = mitigated.save(out_dir / "repaired_model.pt")
        acc_after, asr_after = _rates(mitigated.predict, data)
        console.print(f"    {mitigated.summary()}")
        console.print(f"    planted trigger on test digits: attack success {asr_before:.1%} -> "
                      f"{asr_after:.1%}, clean accuracy {acc_before:.1%} -> {acc_after:.1%}")
        mitigation_dict = mitigated.to_dict()
        mitigation_dict["saved_model"] = repaired_path
        if examples:  # the report's examples, as the repaired model sees them
            mitigation_dict[STAMPED_EXAMPLES] = examples_after(mitigated, examples)
    else:
        console.print("[bold]3/4[/] nothing flagged, so nothing to mitigate")

    demo_facts: dict[str, Any] = {
        "planted_target_label": TARGET_LABEL,
        "planted_trigger": f"{TRIGGER_SIZE}x{TRIGGER_SIZE} white square, one pixel from the "
                           f"bottom-right corner of the {IMAGE_SIZE}x{IMAGE_SIZE} image",
        "poisoned_fraction": POISON_FRACTION,
        "detected": TARGET_LABEL in result.flagged_labels,
        "test_images": int(len(data.x_test)),
        "clean_accuracy_before": acc_before,
        "planted_trigger_attack_success_before": asr_before,
        "clean_accuracy_after_unlearning": acc_after,
        "planted_trigger_attack_success_after_unlearning": asr_after,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    console.print("[bold]4/4[/] writing the report")
    paths = write_report(result, out_dir, mitigation=mitigation_dict, demo=demo_facts)
    console.print(f"done in {time.perf_counter() - started:.0f} s. Scan it yourself with:\n"
                  f"    neuralcleanse scan {model_path} --arch "
                  f"neuralcleanse.backends.torch.architectures:small_cnn --arch-kwargs "
                  f"'{{\"image_size\": {IMAGE_SIZE}}}' --data {out_dir / 'clean_digits.npz'}")
    console.print(f"[bold]report:[/] {paths.html}")
    return paths
