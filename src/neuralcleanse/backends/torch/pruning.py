"""Reversible neuron pruning of PyTorch models: forward hooks that zero chosen channels.

While a model is pruned its weights stay as they are: a :class:`NeuronMask` hook on the module
zeroes the chosen neurons (channel axis 1) of the module's input or output, pruning ``[]`` undoes
it, and :func:`pruned_state_dict` writes the pruning into a copy of the weights for saving.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from neuralcleanse.core.errors import InputError


class NeuronMask:
    """Forward (pre-)hook that zeroes chosen neurons along the channel axis (axis 1).

    Args:
        side: ``"input"`` for a pre-hook on the module's input, ``"output"`` for its output.
    """

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
        """The hook: ``(inputs,)`` for a pre-hook, ``(inputs, output)`` for a forward hook."""
        if self.side == "input":
            (inputs,) = args
            return (self._apply(inputs[0]), *inputs[1:])
        return self._apply(args[1])


def pruning_hooks(model: torch.nn.Module) -> dict[str, NeuronMask]:
    """The pruning hook of every module that has one, by module name."""
    found = {}
    for name, module in model.named_modules():
        for hook in [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]:
            if isinstance(hook, NeuronMask):
                found[name] = hook
    return found


def set_pruned(model: torch.nn.Module, name: str, side: str, neurons: np.ndarray) -> None:
    """Prune ``neurons`` of module ``name``'s input or output, replacing its earlier pruning."""
    hook = pruning_hooks(model).get(name)
    if hook is None:
        module = dict(model.named_modules())[name]
        hook = NeuronMask(side)
        if side == "input":
            module.register_forward_pre_hook(hook)
        else:
            module.register_forward_hook(hook)
    hook.pruned = np.asarray(neurons, dtype=np.int64).ravel().copy()


def pruned_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state dict with the pruned neurons' weights (and biases) zeroed.

    Raises:
        InputError: If a pruned module has no ``weight`` to write the pruning into.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    for name, hook in pruning_hooks(model).items():
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
    return state
