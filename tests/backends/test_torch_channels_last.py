"""The channels-last layout the PyTorch trigger step feeds a convolutional model."""

from __future__ import annotations

import torch

from neuralcleanse.backends.torch.session import to_channels_last


def _conv_net(in_channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 4, 3), torch.nn.ReLU()).eval()


def test_a_one_channel_batch_gets_nhwc_strides_as_a_view():
    x = torch.rand(5, 1, 6, 7)
    out = to_channels_last(x)
    assert out.shape == x.shape and torch.equal(out, x)
    assert out.stride() == (42, 1, 7, 1)
    assert out.data_ptr() == x.data_ptr()  # a view: no copy per mini-batch
    # what torch offers leaves the strides as they are, so the model would run NCHW kernels
    assert x.contiguous(memory_format=torch.channels_last).stride() == x.stride()


def test_a_one_channel_batch_makes_the_convolutions_run_channels_last():
    x = torch.rand(3, 1, 8, 8)
    net = _conv_net(1)
    plain, nhwc = net(x), net(to_channels_last(x))
    assert plain.is_contiguous() and not plain.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and not nhwc.is_contiguous()
    assert torch.allclose(plain, nhwc, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_input_through_the_view():
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    _conv_net(1)(to_channels_last(x * 2.0)).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0


def test_several_channels_are_made_channels_last_as_torch_does_it():
    x = torch.rand(2, 3, 5, 5)
    out = to_channels_last(x)
    assert torch.equal(out, x)
    assert out.stride() == x.contiguous(memory_format=torch.channels_last).stride()
