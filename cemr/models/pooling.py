"""The ResNet stem's max pooling, run in channels_last on the CPU: the same numbers, about 3x faster.

PyTorch's CPU max_pool2d in NCHW is scalar code: on the stem's (B, 64, 56, 56) map at 112 px it
took about as long as a fifth of the trunk's convolutions. In channels_last it is vectorised over the
channels. The maxima, their indices (first maximum of a window, NaN wins, as NCHW) and so the
gradients are the same bit for bit (tests/test_models.py); the backward pass is the NCHW kernel on
those indices, so second-order steps (BOA) differentiate through it as through nn.MaxPool2d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ChannelsLastMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: tuple, stride: tuple, padding: tuple) -> torch.Tensor:
        out, indices = F.max_pool2d(
            x.contiguous(memory_format=torch.channels_last), kernel, stride, padding, return_indices=True
        )
        indices = indices.contiguous()
        ctx.save_for_backward(x, indices)
        ctx.geometry = (kernel, stride, padding)
        return out.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, indices = ctx.saved_tensors
        kernel, stride, padding = ctx.geometry
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, kernel, stride, padding, (1, 1), False, indices
        )
        return grad_x, None, None, None


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d that pools a CPU NCHW map in channels_last and returns NCHW, as nn.MaxPool2d would.
    Other devices, dilation, ceil_mode and return_indices take nn.MaxPool2d's own path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pair = nn.modules.utils._pair
        kernel, stride, padding = pair(self.kernel_size), pair(self.stride), pair(self.padding)
        plain = x.device.type != "cpu" or x.ndim != 4 or not x.is_contiguous()  # channels_last stays as is
        if plain or pair(self.dilation) != (1, 1) or self.ceil_mode or self.return_indices:
            return super().forward(x)
        if not (torch.is_grad_enabled() and x.requires_grad):
            cl = x.contiguous(memory_format=torch.channels_last)
            return F.max_pool2d(cl, kernel, stride, padding).contiguous()
        return _ChannelsLastMaxPool.apply(x, kernel, stride, padding)


def faster_max_pools(module: nn.Module) -> nn.Module:
    """Replace every plain nn.MaxPool2d in `module` by MaxPool2d (same geometry; no weights change)."""
    for name, child in list(module.named_children()):
        if type(child) is nn.MaxPool2d:
            setattr(
                module,
                name,
                MaxPool2d(
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.return_indices,
                    child.ceil_mode,
                ),
            )
        else:
            faster_max_pools(child)
    return module
