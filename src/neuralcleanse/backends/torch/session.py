"""The PyTorch trigger session: stacked trigger parameters and their eager step.

The math of the step is :class:`~neuralcleanse.backends.base.TriggerSession`'s; this module only
says how PyTorch computes it (one ``(labels, P)`` tensor, autograd, in-place Adam moments).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from neuralcleanse.backends.base import (
    ADAM_BETAS,
    ADAM_EPSILON,
    PROBABILITY_FLOOR,
    TANH_EPSILON,
    StepStats,
    TriggerSession,
)
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.layout import mask_axes

if TYPE_CHECKING:
    from neuralcleanse.backends.torch.classifier import TorchClassifier


class TorchTriggerSession(TriggerSession):
    """Trigger parameters of a stack of labels as one ``(labels, P)`` tensor with Adam state.

    Follows :class:`~neuralcleanse.backends.base.TriggerSession`. Opened by
    :meth:`TorchClassifier.trigger_session`, which keeps the model frozen while it is open.

    Args:
        clf: The classifier whose model is searched.
        x: Clean raw images in the model's layout.
        y: Their integer labels.
        config: The scan settings (``learning_rate``, ``norm`` and ``precision`` are used).
    """

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
        self.channels_last = channels_last_helps(clf, self.x[:2])
        self.bf16 = config.precision == "bf16"
        if self.bf16 and dev.type not in ("cpu", "cuda"):
            raise InputError(f"precision='bf16' runs on a CPU or a CUDA device, not on "
                             f"{dev.type!r}: use precision='fp32'")

    @property
    def size(self) -> int:
        """Follows :attr:`TriggerSession.size`."""
        return int(self.theta.shape[0])

    def add(self, targets: np.ndarray, mask_raw: np.ndarray, pattern_raw: np.ndarray) -> None:
        """Follows :meth:`TriggerSession.add`."""
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
        """Follows :meth:`TriggerSession.remove`."""
        keep = np.setdiff1d(np.arange(self.size), np.asarray(slots))
        index = torch.as_tensor(keep, dtype=torch.int64, device=self.clf.device)
        for name in ("theta", "m", "v", "t", "targets"):
            setattr(self, name, getattr(self, name).index_select(0, index))

    def state(self) -> dict[str, np.ndarray]:
        """Follows :meth:`TriggerSession.state` (copies: the moments are updated in place)."""
        return {name: getattr(self, name).detach().cpu().numpy().copy()
                for name in ("theta", "m", "v", "t", "targets")}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Follows :meth:`TriggerSession.load_state`."""
        dev = self.clf.device
        for name in ("theta", "m", "v", "t"):
            value = np.asarray(state[name], dtype=np.float32)
            setattr(self, name, torch.from_numpy(value.copy()).to(dev))
        self.targets = torch.as_tensor(np.asarray(state["targets"], dtype=np.int64), device=dev)

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
        """Follows :meth:`TriggerSession.step` (eager autograd, Adam moments updated in place)."""
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
                stamped = to_channels_last(stamped)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = clf.forward(stamped)
            out = out.float().view(n_labels, batch, -1)
            if probabilities:
                log_p = out.clamp_min(PROBABILITY_FLOOR).log()
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
        """Follows :meth:`TriggerSession.triggers`."""
        index = torch.as_tensor(np.asarray(slots), dtype=torch.int64, device=self.clf.device)
        with torch.no_grad():
            mask, pattern = self._decode(self.theta.index_select(0, index))
        return mask.cpu().numpy(), pattern.cpu().numpy()


def channels_last_helps(clf: TorchClassifier, sample: torch.Tensor) -> bool:
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
            other = clf.forward(to_channels_last(sample))
    except Exception:  # noqa: BLE001 - any failure means "keep the default layout"
        return False
    return bool(plain.shape == other.shape
                and torch.allclose(plain, other, rtol=1e-4, atol=1e-5 * float(
                    plain.abs().max().clamp_min(1.0))))


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A contiguous NCHW batch with channels-last strides, a view where it has one channel.

    ``contiguous(memory_format=torch.channels_last)`` leaves a one-channel batch's strides as
    they are (the tensor already counts as channels-last), so oneDNN still picks its NCHW
    convolutions for the whole network; a ``(N, H, W, 1)`` view permuted to ``(N, 1, H, W)``
    carries the NHWC strides that make it choose the channels-last ones (a LeNet-5 on 28x28x1
    images ran its forward and backward pass 1.7-2x faster in our measurements).
    """
    if x.shape[1] == 1 and x.is_contiguous():
        n, _, h, w = x.shape
        return x.view(n, h, w, 1).permute(0, 3, 1, 2)
    return x.contiguous(memory_format=torch.channels_last)
