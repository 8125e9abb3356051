"""PyTorch backend: any ``torch.nn.Module`` classifier (and Keras 3 models on the torch backend)."""

from __future__ import annotations

import copy as copy_module
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuralcleanse.backends.base import (
    TANH_EPSILON,
    Classifier,
    Preprocessing,
    StepStats,
    TriggerSession,
    keras_channels_first,
    keras_data_format,
    keras_input_shape,
    keras_module,
    keras_output_kind,
    rows_are_probabilities,
)
from neuralcleanse.backends.differentiable import preprocessing_description, split_preprocessing
from neuralcleanse.core.checks import check_clip_values
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError, InputTypeError
from neuralcleanse.core.layout import mask_axes

ADAM_BETAS = (0.5, 0.9)
ADAM_EPSILON = 1e-8


def _as_tensor_preprocessing(preprocessing: Preprocessing, device: torch.device,
                             input_shape: tuple[int, ...]) -> Callable[[torch.Tensor],
                                                                       torch.Tensor] | None:
    """Turn ``(subtrahend, divisor)`` or a callable into a function on tensors."""
    if callable(preprocessing):
        return preprocessing
    pair = split_preprocessing(preprocessing, input_shape)
    if pair is None:
        return None
    sub_t, div_t = (torch.from_numpy(np.asarray(a, np.float32)).to(device) for a in pair)
    return lambda x: (x - sub_t) / div_t


class TorchClassifier(Classifier):
    """A PyTorch image classifier seen through the backend interface.

    A Keras 3 model on the torch backend is a ``torch.nn.Module`` too; for one, what the model
    declares fills the options left out (its input shape, its layers' data format, and its
    final activation: softmax means probabilities), as the TensorFlow backend reads them.

    Args:
        model: The ``torch.nn.Module``; it is never modified.
        input_shape: Shape of one raw input (e.g. ``(1, 28, 28)``); may be left out for a Keras
            model that declares it.
        output: ``"logits"`` or ``"probabilities"``: what the model's last layer returns.
            Defaults to logits, or for a Keras model to what its final activation says (or
            failing that, to what a probe batch's outputs look like).
        channels_first: Whether inputs are ``(C, H, W)`` or ``(H, W, C)``. Defaults to True
            (PyTorch's convention), or for a Keras model to its layers' data format (Keras'
            configured ``image_data_format()`` when no layer has one); a value that contradicts
            the data format a Keras model's layers declare is refused.
        clip_values: Raw input range ``(min, max)``; stamped triggers stay inside it.
        preprocessing: ``(subtrahend, divisor)`` or a callable on tensors, applied to raw inputs
            (after a trigger is stamped) before the model.
        device: Where to compute; defaults to the device of the model's parameters.
        nb_classes: Number of outputs; found with one forward pass when omitted.
    """

    framework = "pytorch"

    def __init__(self, model: torch.nn.Module, input_shape: tuple[int, ...] | None = None, *,
                 output: str | None = None, channels_first: bool | None = None,
                 clip_values: tuple[float, float] = (0.0, 1.0),
                 preprocessing: Preprocessing = None, device: str | torch.device | None = None,
                 nb_classes: int | None = None) -> None:
        if not isinstance(model, torch.nn.Module):
            raise InputTypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
        if output is not None and output not in ("logits", "probabilities"):
            raise InputError(f"output must be 'logits' or 'probabilities' (got {output!r})")
        self.model = model
        #: The Keras package when ``model`` is a Keras 3 model on the torch backend, else None.
        self.keras = keras_module(model)
        self.input_shape = self._resolve_input_shape(input_shape)
        if len(self.input_shape) not in (2, 3):
            raise InputError(f"input_shape must be (C, H, W), (H, W, C) or (H, W); got "
                             f"{self.input_shape}")
        if self.keras is not None:
            self.channels_first = keras_channels_first(model, channels_first)
        else:
            self.channels_first = True if channels_first is None else bool(channels_first)
        self.clip_values = check_clip_values(clip_values)
        first = next(iter(model.parameters()), None)
        home = first.device if first is not None else torch.device("cpu")
        self.device = home if device is None else torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise InputError(f"device {str(device)!r} was asked for, but this PyTorch "
                                 f"({torch.__version__}) sees no CUDA GPU")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
        if first is not None and self.device != home:
            # Work on a copy on the requested device: the caller's model stays where it is.
            self.model = copy_module.deepcopy(model).to(self.device)
        self.preprocessing = preprocessing
        self._preprocess = _as_tensor_preprocessing(preprocessing, self.device, self.input_shape)
        self._bytes_per_image: int | None = None
        self.output = output or "logits"
        self.nb_classes = int(nb_classes) if nb_classes else self._count_outputs()
        if output is None and self.keras is not None:
            self.output = keras_output_kind(model) or self._probe_output_kind()

    def _resolve_input_shape(self, given: tuple[int, ...] | None) -> tuple[int, ...]:
        """``given``, checked against what a Keras model declares, or the declared shape."""
        declared = keras_input_shape(self.model) if self.keras is not None else None
        if given is None:
            if declared is None or any(d is None for d in declared):
                raise InputError("input_shape is required: the model does not declare the shape "
                                 "of its input")
            return tuple(int(d) for d in declared)  # type: ignore[arg-type]
        shape = tuple(int(d) for d in given)
        if declared is not None and (len(declared) != len(shape) or any(
                d is not None and d != s for d, s in zip(declared, shape))):
            raise InputError(f"inputs of shape {shape} do not match the Keras model's input "
                             f"shape {declared} ({keras_data_format(self.model)[0]}): give images "
                             "in the model's layout")
        return shape

    def _probe_output_kind(self) -> str:
        """Probabilities when a probe batch's outputs are probability rows, else logits."""
        lo, hi = self.clip_values
        probe = np.random.default_rng(0).uniform(lo, hi, (8, *self.input_shape))
        return "probabilities" if rows_are_probabilities(self.predict(probe)) else "logits"

    def describe(self) -> dict[str, Any]:
        """Model facts echoed in reports."""
        out = super().describe()
        out.update(device=str(self.device), torch_version=torch.__version__,
                   model_class=type(self.model).__name__,
                   preprocessing=preprocessing_description(self.preprocessing))
        if self.keras is not None:
            out.update(keras=self.keras.__name__, keras_backend="torch",
                       keras_version=getattr(self.keras, "__version__", ""))
        return out

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Inference mode with frozen weights; restores modes and ``requires_grad`` on exit."""
        modes = [(m, m.training) for m in self.model.modules()]
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            self.model.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            yield
        finally:
            for m, training in modes:
                m.training = training
            for p, flag in flags:
                p.requires_grad_(flag)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocess raw inputs and run the model."""
        if self._preprocess is not None:
            x = self._preprocess(x)
        # Keras layers take the mode as an argument, not from torch's module flag
        out = self.model(x) if self.keras is None else self.model(x, training=self.model.training)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out

    def _count_outputs(self) -> int:
        lo, hi = self.clip_values
        probe = torch.full((1, *self.input_shape), (lo + hi) / 2, device=self.device)
        with self.frozen(), torch.no_grad():
            try:
                out = self.forward(probe)
            except Exception as exc:  # the model rejected the input shape
                raise InputError(f"the model could not run on inputs of shape "
                                 f"{(1, *self.input_shape)}: {exc}") from exc
        if out.ndim != 2:
            raise InputError(f"the model must return one row of class scores per image; got "
                             f"output shape {tuple(out.shape)}")
        return int(out.shape[1])

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Model outputs for raw inputs ``x``, computed in inference mode."""
        outs = []
        with self.frozen(), torch.no_grad():
            for start in range(0, len(x), batch_size):
                chunk = torch.as_tensor(np.asarray(x[start:start + batch_size], np.float32),
                                        device=self.device)
                outs.append(self.forward(chunk).float().cpu().numpy())
        if not outs:
            return np.zeros((0, self.nb_classes), dtype=np.float32)
        return np.concatenate(outs)

    def activation_bytes_per_image(self) -> int:
        """Bytes autograd keeps for one image's backward pass, times two (gradient workspace).

        Measured with saved-tensor hooks on a probe batch, so it also works for TorchScript
        modules, which refuse module hooks.
        """
        if self._bytes_per_image is None:

            def saved_bytes(n_images: int) -> int:
                saved = [0]

                def pack(tensor: torch.Tensor) -> torch.Tensor:
                    saved[0] += tensor.numel() * tensor.element_size()
                    return tensor

                probe = torch.zeros((n_images, *self.input_shape), device=self.device,
                                    requires_grad=True)
                with self.frozen(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    self.forward(probe)
                return saved[0]

            # the difference removes what does not grow with the batch (weights saved by ops)
            per_image = (saved_bytes(3) - saved_bytes(1)) // 2 + 4 * int(np.prod(self.input_shape))
            self._bytes_per_image = 2 * max(per_image, 1)
        return self._bytes_per_image

    # -- layers, pruning, fine-tuning, saving ------------------------------------------------
    def _refuse_keras_layers(self) -> None:
        # Keras layers are not torch submodules: hooks on what torch lists would never fire
        if self.keras is not None:
            raise InputError("layer activations and pruning of a Keras model run on the "
                             "TensorFlow backend only: set KERAS_BACKEND=tensorflow before "
                             "Keras is imported")

    def layer_names(self) -> list[str]:
        """Names of the model's leaf modules, in registration order."""
        self._refuse_keras_layers()
        return [name for name, m in self.model.named_modules() if name and not list(m.children())]

    def _final_layer(self) -> str:
        finals = [name for name, m in self.model.named_modules()
                  if isinstance(m, (torch.nn.Linear, torch.nn.LazyLinear))]
        if not finals:
            raise InputError("the model has no torch.nn.Linear layer to call the final "
                             "classification layer; choose a layer by name from: "
                             f"{', '.join(self.layer_names())}")
        return finals[-1]

    def resolve_layer(self, layer: str | int | None) -> tuple[str, str]:
        """Map a layer spec onto ``(module name, "input" | "output")``."""
        self._refuse_keras_layers()
        name = self.layer_spec_name(layer, extra_names=tuple(dict(self.model.named_modules())))
        return (self._final_layer(), "input") if name is None else (name, "output")

    def neuron_activations(self, x: np.ndarray, layer: str | int | None = None,
                           batch_size: int = 256) -> np.ndarray:
        """Per-neuron activations of one layer; convolution channels averaged over space."""
        name, side = self.resolve_layer(layer)
        module = dict(self.model.named_modules())[name]
        captured: list[torch.Tensor] = []

        def grab(tensor: Any) -> None:
            t = tensor[0] if isinstance(tensor, (tuple, list)) else tensor
            t = t.detach().float()
            if t.ndim > 2:
                t = t.flatten(2).mean(dim=2)
            captured.append(t.cpu())

        if side == "input":
            handle = module.register_forward_pre_hook(lambda _m, inp: grab(inp))
        else:
            handle = module.register_forward_hook(lambda _m, _i, out: grab(out))
        try:
            self.predict(x, batch_size=batch_size)
        finally:
            handle.remove()
        return torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32)

    def _pruning_hooks(self) -> dict[str, _NeuronMask]:
        found = {}
        for name, module in self.model.named_modules():
            for hook in [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]:
                if isinstance(hook, _NeuronMask):
                    found[name] = hook
        return found

    def set_pruned_neurons(self, layer: str | int | None, neurons: np.ndarray) -> None:
        """Zero some neurons of a layer through a hook; the weights stay as they are."""
        name, side = self.resolve_layer(layer)
        hooks = self._pruning_hooks()
        hook = hooks.get(name)
        if hook is None:
            module = dict(self.model.named_modules())[name]
            hook = _NeuronMask(side)
            if side == "input":
                module.register_forward_pre_hook(hook)
            else:
                module.register_forward_hook(hook)
        hook.pruned = np.asarray(neurons, dtype=np.int64).ravel().copy()

    def pruned_neurons(self) -> dict[str, np.ndarray]:
        """The pruned neurons of every layer that has some, by module name."""
        return {name: h.pruned for name, h in self._pruning_hooks().items() if h.pruned.size}

    def copy(self) -> TorchClassifier:
        """An independent copy of the model (pruning hooks included) with the same settings."""
        return TorchClassifier(copy_module.deepcopy(self.model), self.input_shape,
                               output=self.output, channels_first=self.channels_first,
                               clip_values=self.clip_values, preprocessing=self.preprocessing,
                               device=self.device, nb_classes=self.nb_classes)

    def fine_tune(self, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float,
                  batch_size: int, seed: int) -> None:
        """Adam on the cross-entropy, in training mode; the model ends in inference mode."""
        gen = torch.Generator().manual_seed(int(seed))
        params = [p for p in self.model.parameters()]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        optimiser = torch.optim.Adam(params, lr=learning_rate)
        xs = torch.as_tensor(np.asarray(x, np.float32))
        ys = torch.as_tensor(np.asarray(y, np.int64))
        self.model.train()
        try:
            for _ in range(int(epochs)):
                order = torch.randperm(len(xs), generator=gen)
                for start in range(0, len(xs), batch_size):
                    idx = order[start:start + batch_size]
                    out = self.forward(xs[idx].to(self.device))
                    log_p = (out.clamp_min(1e-12).log() if self.output == "probabilities"
                             else torch.log_softmax(out, dim=1))
                    loss = torch.nn.functional.nll_loss(log_p, ys[idx].to(self.device))
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
        finally:
            self.model.eval()
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)

    def save(self, path: str) -> str:
        """Write the state dict (pruned neurons zeroed in the weights) with ``torch.save``.

        A Keras model is saved as Keras saves it (a ``.keras`` file, whatever the suffix asked
        for), so that it loads again as the model it is.
        """
        if self.keras is not None:
            if self.pruned_neurons():
                raise InputError("pruning hooks on a Keras model cannot be written into its "
                                 "weights; prune the model on the TensorFlow backend instead")
            keras_out = Path(path).with_suffix(".keras")
            keras_out.parent.mkdir(parents=True, exist_ok=True)
            self.model.save(str(keras_out))
            return str(keras_out)
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        modules = dict(self.model.named_modules())
        for name, hook in self._pruning_hooks().items():
            if not hook.pruned.size:
                continue
            idx = torch.as_tensor(hook.pruned)
            prefix = f"{name}." if name else ""
            weight = state.get(f"{prefix}weight")
            if weight is None:
                raise InputError(f"cannot write the pruning of layer {name!r} into weights: "
                                 f"{type(modules[name]).__name__} has no weight")
            if hook.side == "input":
                weight[:, idx] = 0
            else:
                weight[idx] = 0
                if f"{prefix}bias" in state:
                    state[f"{prefix}bias"][idx] = 0
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, out)
        return str(out)

    @contextmanager
    def trigger_session(self, x: np.ndarray, y: np.ndarray, config: ScanConfig
                        ) -> Iterator[TriggerSession]:
        """Open a stacked trigger search over ``x, y`` with the model frozen."""
        with self.frozen():
            yield _TorchTriggerSession(self, x, y, config)


class _NeuronMask:
    """Forward (pre-)hook that zeroes chosen neurons along the channel axis (axis 1)."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.pruned = np.zeros(0, dtype=np.int64)

    def _apply(self, t: torch.Tensor) -> torch.Tensor:
        if not self.pruned.size:
            return t
        keep = torch.ones(t.shape[1], device=t.device, dtype=t.dtype)
        keep[torch.as_tensor(self.pruned, device=t.device)] = 0
        return t * keep.view(1, -1, *([1] * (t.ndim - 2)))

    def __call__(self, _module: torch.nn.Module, *args: Any) -> Any:
        if self.side == "input":
            (inputs,) = args
            return (self._apply(inputs[0]), *inputs[1:])
        return self._apply(args[1])


class _TorchTriggerSession(TriggerSession):
    """Trigger parameters of a stack of labels as one ``(labels, P)`` tensor with Adam state."""

    def __init__(self, clf: TorchClassifier, x: np.ndarray, y: np.ndarray,
                 config: ScanConfig) -> None:
        self.clf = clf
        dev = clf.device
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(dev)
        self.shape = clf.input_shape
        self.hw = clf.image_shape
        self.n_mask = self.hw[0] * self.hw[1]
        self.n_params = self.n_mask + int(np.prod(self.shape))
        self.lr = config.learning_rate
        self.norm = config.norm
        self.lo, self.hi = clf.clip_values
        # (labels, H*W) masks against (labels, batch, *input_shape) images
        self._mask_view = (-1, 1, *mask_axes(tuple(self.shape), clf.channels_first))
        self.theta = torch.zeros((0, self.n_params), device=dev)
        self.m = torch.zeros_like(self.theta)
        self.v = torch.zeros_like(self.theta)
        self.t = torch.zeros(0, device=dev)
        self.targets = torch.zeros(0, dtype=torch.int64, device=dev)
        self.channels_last = _channels_last_helps(clf, self.x[:2])

    @property
    def size(self) -> int:
        return int(self.theta.shape[0])

    def add(self, targets: np.ndarray, mask_raw: np.ndarray, pattern_raw: np.ndarray) -> None:
        k = len(targets)
        new = np.concatenate([mask_raw.reshape(k, -1), pattern_raw.reshape(k, -1)], axis=1)
        dev = self.clf.device
        new_t = torch.from_numpy(new.astype(np.float32)).to(dev)
        self.theta = torch.cat([self.theta, new_t])
        self.m = torch.cat([self.m, torch.zeros_like(new_t)])
        self.v = torch.cat([self.v, torch.zeros_like(new_t)])
        self.t = torch.cat([self.t, torch.zeros(k, device=dev)])
        self.targets = torch.cat([self.targets,
                                  torch.as_tensor(np.asarray(targets), dtype=torch.int64,
                                                  device=dev)])

    def remove(self, slots: np.ndarray) -> None:
        keep = np.setdiff1d(np.arange(self.size), np.asarray(slots))
        index = torch.as_tensor(keep, dtype=torch.int64, device=self.clf.device)
        for name in ("theta", "m", "v", "t", "targets"):
            setattr(self, name, getattr(self, name).index_select(0, index))

    def _decode(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = 1.0 / (2.0 - TANH_EPSILON)
        mask = torch.tanh(theta[:, :self.n_mask]) * scale + 0.5
        pattern = torch.tanh(theta[:, self.n_mask:]) * scale + 0.5
        pattern = self.lo + pattern * (self.hi - self.lo)
        return mask.view(-1, *self.hw), pattern.view(-1, *self.shape)

    def _reg(self, mask: torch.Tensor) -> torch.Tensor:
        if self.norm == 1:
            return mask.sum(dim=(1, 2))
        if self.norm == 2:
            return mask.square().sum(dim=(1, 2)).sqrt()
        return mask.amax(dim=(1, 2))

    def step(self, batch_indices: np.ndarray, costs: np.ndarray) -> StepStats:
        clf = self.clf
        dev = clf.device
        n_mb, n_labels, batch = batch_indices.shape
        index = torch.from_numpy(batch_indices.reshape(n_mb, n_labels * batch)).to(dev)
        cost = torch.as_tensor(costs, dtype=torch.float32, device=dev)
        targets = self.targets.view(n_labels, 1)
        gather_t = self.targets.view(n_labels, 1, 1).expand(n_labels, batch, 1)
        hits = torch.zeros(n_labels, device=dev)
        counted = torch.zeros(n_labels, device=dev)
        reg_sum = torch.zeros(n_labels, device=dev)
        loss_sum = torch.zeros(n_labels, device=dev)
        beta1, beta2 = ADAM_BETAS
        probabilities = clf.output == "probabilities"
        for j in range(n_mb):
            flat = index[j]
            xb = self.x.index_select(0, flat).view(n_labels, batch, *self.shape)
            yb = self.y.index_select(0, flat).view(n_labels, batch)
            theta = self.theta.detach().requires_grad_(True)
            mask, pattern = self._decode(theta)
            stamped = xb + mask.view(self._mask_view) * (pattern.unsqueeze(1) - xb)
            stamped = stamped.view(n_labels * batch, *self.shape)
            if self.channels_last:
                stamped = stamped.contiguous(memory_format=torch.channels_last)
            out = clf.forward(stamped).view(n_labels, batch, -1)
            if probabilities:
                log_p = out.clamp_min(1e-12).log()
            else:
                log_p = torch.log_softmax(out, dim=-1)
            ce = -log_p.gather(2, gather_t).squeeze(2).mean(dim=1)
            reg = self._reg(mask)
            per_label = ce + cost * reg
            (grad,) = torch.autograd.grad(per_label.sum(), theta)
            with torch.no_grad():
                self.t += 1
                self.m.mul_(beta1).add_(grad, alpha=1 - beta1)
                self.v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias1 = (1 - beta1 ** self.t).unsqueeze(1)
                bias2 = (1 - beta2 ** self.t).unsqueeze(1)
                denom = (self.v / bias2).sqrt_().add_(ADAM_EPSILON)
                self.theta = self.theta - (self.lr / bias1) * self.m / denom
                other = yb != targets
                hit = (out.argmax(dim=2) == targets) & other
                hits += hit.sum(dim=1)
                counted += other.sum(dim=1)
                reg_sum += reg
                loss_sum += per_label
        summary = torch.stack([hits / counted.clamp_min(1), reg_sum / n_mb, loss_sum / n_mb])
        host = summary.cpu().numpy().astype(np.float64)
        return StepStats(attack_success_rate=host[0], reg=host[1], loss=host[2])

    def triggers(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = torch.as_tensor(np.asarray(slots), dtype=torch.int64, device=self.clf.device)
        with torch.no_grad():
            mask, pattern = self._decode(self.theta.index_select(0, index))
        return mask.cpu().numpy(), pattern.cpu().numpy()


def _channels_last_helps(clf: TorchClassifier, sample: torch.Tensor) -> bool:
    """Whether to feed the trigger search channels-last images (CPU, NCHW models only).

    oneDNN's CPU convolutions were faster on channels-last inputs in our measurements (a forward
    and backward pass of the GTSRB benchmark network took 20-35 % less time). The switch is only
    made where the model accepts such inputs and gives the same outputs on a two-image probe: a
    model that reshapes with ``view`` or otherwise depends on the memory layout keeps the
    default.
    """
    if clf.device.type != "cpu" or len(clf.input_shape) != 3 or not clf.channels_first \
            or not any(isinstance(m, torch.nn.Conv2d) for m in clf.model.modules()):
        return False
    try:
        with torch.no_grad():
            plain = clf.forward(sample)
            other = clf.forward(sample.contiguous(memory_format=torch.channels_last))
    except Exception:  # noqa: BLE001 - any failure means "keep the default layout"
        return False
    return bool(plain.shape == other.shape
                and torch.allclose(plain, other, rtol=1e-4, atol=1e-5 * float(
                    plain.abs().max().clamp_min(1.0))))


def is_torch_module(model: Any) -> bool:
    """Whether ``model`` is a ``torch.nn.Module``."""
    return isinstance(model, torch.nn.Module)
