"""Shared-storage concatenation for training a dense block (Pleiss et al. 2017, "Memory-Efficient
Implementation of DenseNets"): one buffer per block holds x0 … xL, each feature is copied into
its slice once (L copies of one feature each, where a torch.cat per layer copies every earlier
feature again: the number of copies drops from O(L²) to O(L), while the bytes the layers' staged
concatenations copy stay O(L²) in standard mode), and each layer's entry,
concat → BN (training) → ReLU [→ conv], is one autograd Function.

The chain. `_WriteEnter` ℓ writes the newest feature into the buffer, marks the buffer dirty (an
in-place op as autograd sees it) and returns it, then applies layer ℓ's entry to the buffer's
first channels. The buffer therefore flows through every layer's Function in turn, and backward
visits them in reverse: each adds its gradient for the prefix it read into one gradient buffer
and passes that buffer on, so when layer ℓ's Function runs, the gradient of the feature it wrote
is complete (every later reader ran before it) and is handed out as a slice. One `add_` per
layer replaces the ℓ narrow accumulations that torch.cat's backward leaves to autograd.

Same ops as the plain path: `native_batch_norm` on the concatenation (staged contiguous, as
torch.cat makes it: BN kernels are several times slower on a strided slice, above all in
channels_last), `relu`, `threshold_backward`, `native_batch_norm_backward` and, in efficient mode,
`convolution` / `convolution_backward`. Results agree with the plain path to float rounding (the
order of the gradient sums differs); tests/test_training_paths.py states the tolerance.

Standard mode saves the staged concatenation and the BN-ReLU output (what BN and ReLU save in
the plain path). Efficient mode folds the layer's first conv into the Function and saves only the
BN statistics: backward stages the concatenation again from the buffer and recomputes BN-ReLU
with the saved statistics (one pass, no new statistics, the running ones untouched); the
convolution is never recomputed. A bottleneck layer's tail after that conv, BN → ReLU → conv
(norm2 relu2 conv2), is a second Function (`norm_relu_conv`) that saves only its input, the first
conv's output, and BN's statistics, and recomputes the BN-ReLU output in backward: a layer keeps
its bottleneck map and nothing else (3-D DenseNet-121 at 2x1x96^3: efficient peak 0.57x of
standard before, 0.48x with it; BENCHMARKS.md, MONAI section).

Efficient mode's temporaries (the staged concatenation and the BN-ReLU outputs, in forward and
again in backward) go into one scratch allocation per block, the paper's second shared storage:
every layer of the block reuses it (`Buffer.scratch`), it is freed when the block's forward ends
and allocated again for its backward. Nothing autograd saves is ever in it. Fresh tensors per
layer, each a little larger than the last, are what glibc's default allocator fragments: once its
adaptive mmap threshold has risen (to up to 32 MiB) they come from the heap, the holes they leave
stay in the process, and its peak RSS outgrows what the model keeps. In backward
`threshold_backward` masks convolution_backward's fresh result in place, one allocation fewer;
convolution_backward's and batch norm backward's own results remain fresh allocations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast, overload

import torch
from torch import Tensor, nn

from ..ir import lowering

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Entry:
    """The modules a layer's Function replaces: its leading BN and ReLU and, in efficient mode,
    the conv after them (None in standard mode)."""
    norm: nn.Module
    conv: nn.Module | None


def entry_of(children: list[nn.Module]) -> Entry | None:
    """The layer's entry if it starts norm → ReLU → conv with modules the Function reproduces
    exactly (affine BN that tracks running statistics, zero-padded conv), else None."""
    if len(children) < 3:
        return None
    norm, relu, conv = children[:3]
    if not (type(norm) in _NORMS and norm.affine and norm.track_running_stats
            and type(relu) is nn.ReLU and type(conv) in _CONVS):
        return None
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return None
    return Entry(norm, conv)


def memory_format_of(x: Tensor) -> torch.memory_format:
    """channels_last where the block's input is (4-D, channels-last strides), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class Buffer:
    """The block's storage and the version it must still have when backward reads it."""

    def __init__(self, x: Tensor, channels: int) -> None:
        self.memory_format = memory_format_of(x)
        self.tensor = torch.empty((x.shape[0], channels, *x.shape[2:]), dtype=x.dtype, device=x.device,
                                  memory_format=self.memory_format)
        self.version: int | None = None  # set when the block's forward ends
        self._scratch: Tensor | None = None

    def scratch(self, width: int) -> tuple[Tensor, Tensor]:
        """Efficient mode's two temporaries of a layer, the staged concatenation and its BN-ReLU
        output, as the first `width` channels of one block-wide allocation that every layer of the
        block reuses, in forward and again in backward (Pleiss et al.'s second shared storage).
        Neither is ever saved for backward. Fresh tensors per layer would be freed and allocated
        again at a slightly larger size each layer; glibc's default allocator serves them from its
        heap once its mmap threshold has risen, and the heap keeps the holes (BENCHMARKS.md)."""
        if self._scratch is None:
            self._scratch = torch.empty(2 * self.tensor.numel(), dtype=self.tensor.dtype,
                                        device=self.tensor.device)
        half = self.tensor.numel()
        return (_view(self._scratch[:half], self.tensor, width, self.memory_format),
                _view(self._scratch[half:], self.tensor, width, self.memory_format))

    def scratch_like(self, x: Tensor) -> Tensor:
        """A temporary shaped and laid out like `x` (a map of the block's size): the start of the
        scratch's second half when `x` fits in it (the layer tail's BN-ReLU output, which the
        entry's scratch no longer holds then), else a fresh tensor."""
        if x.shape[0] == self.tensor.shape[0] and x.shape[2:] == self.tensor.shape[2:] \
                and x.shape[1] <= self.tensor.shape[1] and x.dtype == self.tensor.dtype:
            return self.scratch(x.shape[1])[1]
        return torch.empty_like(x, memory_format=self.memory_format)

    def release_scratch(self) -> None:
        """Between the block's forward and its backward nothing needs the scratch: free it."""
        self._scratch = None

    def check(self, tensor: Tensor) -> None:
        if self.version is not None and tensor._version != self.version:
            raise RuntimeError(
                "a dense block's output, which its layers' backward reads, has been modified by an "
                "inplace operation; clone it first (or train with DENSEDSL_TRAINING_PATH=plain)")


def _view(flat: Tensor, like: Tensor, width: int, memory_format: torch.memory_format) -> Tensor:
    """`like`'s shape with `width` channels over the start of `flat`, dense in `memory_format`."""
    batch, spatial = like.shape[0], tuple(like.shape[2:])
    flat = flat[:batch * width * math.prod(spatial)]
    if memory_format == torch.channels_last:
        return flat.view(batch, *spatial, width).permute(0, 3, 1, 2)
    return flat.view(batch, width, *spatial)


def _bn_factor(norm: nn.modules.batchnorm._BatchNorm) -> float:
    """nn.BatchNorm's update factor, counting the batch as it does."""
    assert norm.num_batches_tracked is not None  # entry_of takes only BNs that track running statistics
    norm.num_batches_tracked.add_(1)
    return 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum


def _stage(buffer: Tensor, width: int, memory_format: torch.memory_format) -> Tensor:
    """The first `width` channels as a tensor of their own (what torch.cat makes): always a copy,
    never a view of the buffer, which later layers write into (with a batch of one the slice is
    contiguous already and `.contiguous()` would return the view itself)."""
    return buffer.narrow(1, 0, width).clone(memory_format=memory_format)


def _normalize(x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, invstd: Tensor, *,
               out: Tensor) -> Tensor:
    """BN's output from its saved batch statistics, into `out`: one pass, the running statistics
    untouched."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = weight * invstd
    shift = bias - mean * scale
    return torch.addcmul(shift.view(shape), x, scale.view(shape), out=out)


def _bn_relu_conv(x: Tensor, y: Tensor, norm_weight, norm_bias, conv_weight, conv_bias, norm, conv
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """BN in training (batch statistics; the running ones updated) then ReLU, into `y`, then the
    conv: (the conv's output, the batch mean, the inverse std)."""
    stats = (norm.running_mean, norm.running_var)
    mean, invstd = stats[0].new_empty(0), stats[0].new_empty(0)  # BN's dtype: float for bf16 input
    torch.ops.aten.native_batch_norm.out(x, norm_weight, norm_bias, *stats, True, _bn_factor(norm),
                                         norm.eps, out=y, save_mean=mean, save_invstd=invstd)
    y.relu_()
    z = torch.ops.aten.convolution(y, conv_weight, conv_bias, conv.stride, conv.padding,
                                   conv.dilation, False, [0] * len(conv.stride), conv.groups)
    return z, mean, invstd


def _relu_conv_backward(grad_out: Tensor, x: Tensor, y: Tensor, weight, bias, mean, invstd, conv_weight,
                        conv_bias, conv, needs: tuple[bool, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Backward through `_bn_relu_conv`'s conv and ReLU: recompute the BN-ReLU output into `y` from
    the saved statistics, then (the gradient at BN's output, the conv's weight and bias
    gradients)."""
    _normalize(x, weight, bias, mean, invstd, out=y).relu_()
    grad_y, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad_out, y, conv_weight, None if conv_bias is None else [conv_bias.shape[0]],
        conv.stride, conv.padding, conv.dilation, False, [0] * len(conv.stride), conv.groups,
        [True, needs[0], conv_bias is not None and needs[1]])
    # convolution_backward's fresh result: masked in place, one allocation fewer
    grad_y = torch.ops.aten.threshold_backward.grad_input(grad_y, y, 0, grad_input=grad_y)
    return grad_y, grad_weight, grad_bias


class _WriteEnter(torch.autograd.Function):

    @staticmethod
    def forward(ctx, buffer: Tensor, new: Tensor, norm_weight, norm_bias, conv_weight, conv_bias,
                holder: Buffer, offset: int, width: int, norm, conv, last: bool):
        buffer.narrow(1, offset, new.shape[1]).copy_(new)
        ctx.mark_dirty(buffer)
        ctx.holder, ctx.offset, ctx.channels, ctx.width, ctx.last = holder, offset, new.shape[1], width, last
        ctx.norm, ctx.conv = norm, conv
        if norm is None:
            holder.release_scratch()
            return buffer, None
        # The running statistics are saved as aten's BN saves them (its kernel updates them
        # without a version bump, so a second forward before backward is fine).
        stats = (norm.running_mean, norm.running_var)
        if conv is None:
            x = _stage(buffer, width, holder.memory_format)
            y, mean, invstd = torch.ops.aten.native_batch_norm(
                x, norm_weight, norm_bias, *stats, True, _bn_factor(norm), norm.eps)
            y = y.relu_()
            ctx.save_for_backward(x, y, mean, invstd, norm_weight, *stats)
            return buffer, y
        x, y = holder.scratch(width)  # nothing saves them: the next layer overwrites both
        x.copy_(buffer.narrow(1, 0, width))
        z, mean, invstd = _bn_relu_conv(x, y, norm_weight, norm_bias, conv_weight, conv_bias, norm, conv)
        ctx.save_for_backward(mean, invstd, norm_weight, norm_bias, conv_weight, conv_bias, *stats)
        return buffer, z

    # the ignore: mypy 1.10 holds this against torch's backward(ctx, *grad_outputs), which torch
    # calls with one gradient per output; mypy 2.4 accepts it, hence unused-ignore as well
    @staticmethod
    def backward(ctx, grad_buffer: Tensor | None, grad_out: Tensor | None):  # type: ignore[override, unused-ignore]
        holder = ctx.holder
        if grad_buffer is None:
            grad_buffer = torch.zeros_like(holder.tensor, memory_format=holder.memory_format)
        elif ctx.last:  # the caller's gradient: never written in place
            grad_buffer = grad_buffer.clone(memory_format=holder.memory_format)
        grads: list[Tensor | None] = [None] * 4  # norm weight, norm bias, conv weight, conv bias
        if ctx.norm is not None and grad_out is not None:
            norm, conv = ctx.norm, ctx.conv
            if conv is None:
                x, y, mean, invstd, weight, running_mean, running_var = ctx.saved_tensors
                grad_y = torch.ops.aten.threshold_backward(grad_out, y, 0)
            else:
                mean, invstd, weight, bias, conv_weight, conv_bias, running_mean, running_var = ctx.saved_tensors
                holder.check(holder.tensor)
                x, y = holder.scratch(ctx.width)
                x.copy_(holder.tensor.narrow(1, 0, ctx.width))
                grad_y, grads[2], grads[3] = _relu_conv_backward(
                    grad_out, x, y, weight, bias, mean, invstd, conv_weight, conv_bias, conv,
                    ctx.needs_input_grad[4:6])
            grad_x, grads[0], grads[1] = torch.ops.aten.native_batch_norm_backward(
                grad_y, x, weight, running_mean, running_var, mean, invstd, True, norm.eps,
                [True, ctx.needs_input_grad[2], ctx.needs_input_grad[3]])
            grad_buffer.narrow(1, 0, ctx.width).add_(grad_x)
            if conv is not None and ctx.offset == 0:  # the block's first layer: its backward ends here
                holder.release_scratch()
        grad_new = grad_buffer.narrow(1, ctx.offset, ctx.channels)
        return (grad_buffer, grad_new, *grads, None, None, None, None, None, None)


class _NormReluConv(torch.autograd.Function):
    """Efficient mode's layer tail, BN → ReLU → conv on the layer's bottleneck map (DenseNet-BC's
    norm2 relu2 conv2): saves its input (the entry's conv output, which nothing else keeps) and
    BN's statistics, and recomputes the BN-ReLU output in backward, into the block's scratch."""

    @staticmethod
    def forward(ctx, x: Tensor, norm_weight, norm_bias, conv_weight, conv_bias, holder: Buffer, norm, conv):
        y = holder.scratch_like(x)
        z, mean, invstd = _bn_relu_conv(x, y, norm_weight, norm_bias, conv_weight, conv_bias, norm, conv)
        ctx.holder, ctx.norm, ctx.conv = holder, norm, conv
        ctx.save_for_backward(x, mean, invstd, norm_weight, norm_bias, conv_weight, conv_bias,
                              norm.running_mean, norm.running_var)
        return z

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override, unused-ignore]
        x, mean, invstd, weight, bias, conv_weight, conv_bias, running_mean, running_var = ctx.saved_tensors
        grad_y, grad_conv_weight, grad_conv_bias = _relu_conv_backward(
            grad_out, x, ctx.holder.scratch_like(x), weight, bias, mean, invstd, conv_weight, conv_bias,
            ctx.conv, ctx.needs_input_grad[3:5])
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_y, x, weight, running_mean, running_var, mean, invstd, True, ctx.norm.eps,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return grad_x, grad_weight, grad_bias, grad_conv_weight, grad_conv_bias, None, None, None


def tail_of(rest: list[nn.Module]) -> Entry | None:
    """A layer's rest after its efficient entry, when it is exactly BN → ReLU → conv (`entry_of`'s
    modules; `lowering.RECOMPUTED_TAIL`): efficient mode runs it as one Function."""
    # entry_of checks the kinds (BN, ReLU, conv) in order; the tail is those and nothing after
    entry = entry_of(rest) if len(rest) == len(lowering.RECOMPUTED_TAIL) else None
    return entry if entry is not None and entry.norm.training else None


def norm_relu_conv(x: Tensor, tail: Entry, holder: Buffer) -> Tensor:
    """`tail` on `x` (`tail_of`), keeping only `x` and BN's statistics for backward."""
    norm, conv = tail.norm, cast(nn.Module, tail.conv)
    return _NormReluConv.apply(x, norm.weight, norm.bias, conv.weight, conv.bias, holder, norm, conv)


@overload
def write_enter(buffer: Tensor, new: Tensor, holder: Buffer, offset: int, width: int,
                entry: Entry, efficient: bool) -> tuple[Tensor, Tensor]: ...


@overload
def write_enter(buffer: Tensor, new: Tensor, holder: Buffer, offset: int, width: int,
                entry: None, efficient: bool) -> tuple[Tensor, None]: ...


def write_enter(buffer: Tensor, new: Tensor, holder: Buffer, offset: int, width: int,
                entry: Entry | None, efficient: bool) -> tuple[Tensor, Tensor | None]:
    """Write `new` at channel `offset` of the block's buffer; then, given the next layer's entry,
    apply it to the first `width` channels. Returns (the buffer, the entry's output)."""
    if entry is None:
        return _WriteEnter.apply(buffer, new, None, None, None, None, holder, offset, width, None, None, True)
    norm = entry.norm
    conv = entry.conv if efficient else None
    return _WriteEnter.apply(buffer, new, norm.weight, norm.bias,
                             None if conv is None else conv.weight, None if conv is None else conv.bias,
                             holder, offset, width, norm, conv, False)


__all__ = ["Buffer", "Entry", "entry_of", "memory_format_of", "norm_relu_conv", "tail_of", "write_enter"]
