"""Adaptive convolution: a per-pixel kernel shared by all channels, computed in bounded-memory chunks.

    out[b, c, y, x] = sum_{i < kh, j < kw} K[b, y, x, i, j] * src[b, c, y + i, x + j]

``src`` is the (already padded) source, [B, C, H + kh - 1, W + kw - 1]; ``K`` is [B, H, W, kh, kw].
This is the operation at the heart of FeatUp's learned JBU (Fu et al., "FeatUp: A Model-Agnostic
Framework for Features at Any Resolution", ICLR 2024, Sec. 3.2: the JBU kernel applied to the
bicubically upsampled features; their ``AdaptiveConv`` CUDA / C++ extension). FeatUp's pure-PyTorch
alternative, ``unfold`` + ``einsum`` (:func:`adaptive_conv_reference` here), materialises a
[B, C, kh * kw, H, W] tensor: 49 times the output for a 7 x 7 kernel.

:func:`adaptive_conv` never does. Forward and backward loop over blocks of output rows and channels
(:func:`chunk_plan`) and, inside a block, over the kh * kw taps, accumulating in place:

* forward: ``out[block] += K[..., i, j] * src[shifted block]`` (``addcmul_``; no temporary beyond a
  contiguous copy of the block's kernel rows);
* backward: ``grad_src[shifted block] += K[..., i, j] * grad_out[block]`` and
  ``grad_K[..., i, j] = sum_c grad_out[block] * src[shifted block]`` (one block-sized temporary).

Peak memory is therefore the output (forward; plus ``grad_src`` and ``grad_K`` in backward) plus one
block of at most ``max_chunk_bytes`` bytes. :func:`local_correlation` (the kernel gradient as a forward
pass: FeatUp's range-kernel logits) reuses the same loops. Small blocks also stay in the CPU caches during the tap
loop. The chunked version is pure PyTorch: it runs on CPU and CUDA alike, with no extension to build.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._checks import check_chunk_bytes, check_float_tensor

__all__ = [
    "adaptive_conv",
    "local_correlation",
    "adaptive_conv_reference",
    "chunk_plan",
    "default_chunk_bytes",
    "DEFAULT_CHUNK_BYTES_CPU",
    "DEFAULT_CHUNK_BYTES_CUDA",
]

#: Default block size on the CPU: small enough that a block and its source rows stay in cache.
DEFAULT_CHUNK_BYTES_CPU = 4 << 20
#: Default block size on CUDA: large blocks keep the number of kernel launches low.
DEFAULT_CHUNK_BYTES_CUDA = 256 << 20


def default_chunk_bytes(device: torch.device) -> int:
    """The block size :func:`adaptive_conv` uses when ``max_chunk_bytes`` is None, in bytes."""
    return DEFAULT_CHUNK_BYTES_CUDA if device.type == "cuda" else DEFAULT_CHUNK_BYTES_CPU


def chunk_plan(batch: int, channels: int, height: int, width: int, element_size: int,
               max_chunk_bytes: int) -> list[tuple[int, int, int, int]]:
    """Blocks ``(y0, y1, c0, c1)`` of output rows and channels that :func:`adaptive_conv` processes.

    A block holds ``batch * (c1 - c0) * (y1 - y0) * width`` elements of ``element_size`` bytes and
    stays within ``max_chunk_bytes``: whole-channel row blocks when one row of all channels fits,
    otherwise single rows split into channel groups. One row of one channel is the smallest block,
    so a budget below ``batch * width * element_size`` bytes still gives blocks of that size.
    Blocks are ordered by rows, then channels, and cover the output exactly once.

    Raises:
        ValueError: a non-positive dimension or budget.
    """
    for name, v in (("batch", batch), ("channels", channels), ("height", height), ("width", width),
                    ("element_size", element_size), ("max_chunk_bytes", max_chunk_bytes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    row_bytes = batch * channels * width * element_size
    if row_bytes <= max_chunk_bytes:
        rows = min(height, max_chunk_bytes // row_bytes)
        return [(y0, min(y0 + rows, height), 0, channels) for y0 in range(0, height, rows)]
    group = max(1, max_chunk_bytes // (batch * width * element_size))
    return [(y, y + 1, c0, min(c0 + group, channels)) for y in range(height) for c0 in range(0, channels, group)]


# Windows are "shifted" (rows = cols = None: tap (i, j) of output (y, x) reads src[y + i, x + j], a view)
# or "gathered" (index tables rows [H, kh] and cols [W, kw], non-decreasing along both axes: classical
# JBU's low-res windows). For gathered windows, per block and kernel column j, the few low-res rows
# the block reads are gathered along x once (torch.gather, the slow part); each tap then only copies
# whole rows of that.


def _conv(src: torch.Tensor, kernel: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None,
          budget: int) -> torch.Tensor:
    """out[b,c,y,x] = sum_ij kernel[b,y,x,i,j] src[b,c,R(y,i),C(x,j)], block by block."""
    b, c = src.shape[:2]
    _, h, w, kh, kw = kernel.shape
    out = src.new_zeros((b, c, h, w))
    row_span = None if rows is None else (rows[:, 0].tolist(), rows[:, -1].tolist())
    kc, block = None, None
    for y0, y1, c0, c1 in chunk_plan(b, c, h, w, src.element_size(), budget):
        if block != (y0, y1):
            block = (y0, y1)
            kc = kernel[:, y0:y1].permute(0, 3, 4, 1, 2).contiguous()  # [B, kh, kw, rows, W]
        acc = out[:, c0:c1, y0:y1]
        if rows is None:
            for i in range(kh):
                for j in range(kw):
                    acc.addcmul_(src[:, c0:c1, y0 + i: y1 + i, j: j + w], kc[:, i, j].unsqueeze(1))
            continue
        lo, hi = row_span[0][y0], row_span[1][y1 - 1] + 1
        sub = src[:, c0:c1, lo:hi]
        rel = rows[y0:y1] - lo
        for j in range(kw):
            colg = torch.gather(sub, 3, cols[:, j].view(1, 1, 1, w).expand(*sub.shape[:3], w))
            for i in range(kh):
                acc.addcmul_(colg.index_select(2, rel[:, i]), kc[:, i, j].unsqueeze(1))
    return out


def _conv_grads(src: torch.Tensor, kernel: torch.Tensor | None, grad_out: torch.Tensor, rows: torch.Tensor | None,
                cols: torch.Tensor | None, budget: int, need_src: bool,
                need_kernel: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`_conv` for ``grad_out`` [B, C, H, W]: grad_src (needs ``kernel``) and
    grad_kernel[b,y,x,i,j] = sum_c grad_out[b,c,y,x] src[b,c,R(y,i),C(x,j)] (needs only src; with
    ``kernel`` None its window size comes from the shapes of shifted windows or the index tables)."""
    b, c, h, w = grad_out.shape
    if kernel is not None:
        kh, kw = kernel.shape[3:]
    elif rows is None:
        kh, kw = src.shape[2] - h + 1, src.shape[3] - w + 1
    else:
        kh, kw = rows.shape[1], cols.shape[1]
    grad_src = torch.zeros_like(src) if need_src else None
    grad_kernel = src.new_zeros((b, h, w, kh, kw)) if need_kernel else None
    row_span = None if rows is None else (rows[:, 0].tolist(), rows[:, -1].tolist())
    plan = chunk_plan(b, c, h, w, src.element_size(), budget)
    kc, gk = None, None
    for n, (y0, y1, c0, c1) in enumerate(plan):
        if n == 0 or plan[n - 1][:2] != (y0, y1):
            kc = kernel[:, y0:y1].permute(0, 3, 4, 1, 2).contiguous() if need_src else None  # [B, kh, kw, rows, W]
            gk = src.new_zeros((b, kh, kw, y1 - y0, w)) if need_kernel else None
        g = grad_out[:, c0:c1, y0:y1]
        if rows is None:
            for i in range(kh):
                for j in range(kw):
                    tap = src[:, c0:c1, y0 + i: y1 + i, j: j + w]
                    if need_kernel:
                        gk[:, i, j] += (g * tap).sum(1)
                    if need_src:
                        grad_src[:, c0:c1, y0 + i: y1 + i, j: j + w].addcmul_(g, kc[:, i, j].unsqueeze(1))
        else:
            lo, hi = row_span[0][y0], row_span[1][y1 - 1] + 1
            sub = src[:, c0:c1, lo:hi]
            rel = rows[y0:y1] - lo
            for j in range(kw):
                index = cols[:, j].view(1, 1, 1, w).expand(*sub.shape[:3], w)
                colg = torch.gather(sub, 3, index) if need_kernel else None
                gsum = g.new_zeros(index.shape) if need_src else None
                for i in range(kh):
                    if need_kernel:
                        gk[:, i, j] += (g * colg.index_select(2, rel[:, i])).sum(1)
                    if need_src:
                        gsum.index_add_(2, rel[:, i], g * kc[:, i, j].unsqueeze(1))
                if need_src:
                    grad_src[:, c0:c1, lo:hi].scatter_add_(3, index, gsum)
        if need_kernel and (n + 1 == len(plan) or plan[n + 1][:2] != (y0, y1)):
            grad_kernel[:, y0:y1] = gk.permute(0, 3, 4, 1, 2)
    return grad_src, grad_kernel


class _WindowConv(torch.autograd.Function):
    """Differentiable :func:`_conv` (shifted or gathered windows)."""

    @staticmethod
    def forward(ctx, src, kernel, rows, cols, budget):  # noqa: D401 (autograd signature)
        ctx.save_for_backward(src, kernel, rows, cols)
        ctx.budget = budget
        return _conv(src, kernel, rows, cols, budget)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        src, kernel, rows, cols = ctx.saved_tensors
        need_src, need_kernel = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_src or need_kernel):
            return None, None, None, None, None
        grad_src, grad_kernel = _conv_grads(src, kernel, grad_out.contiguous(), rows, cols, ctx.budget, need_src,
                                            need_kernel)
        return grad_src, grad_kernel, None, None, None


class _LocalCorrelation(torch.autograd.Function):
    """corr[b,y,x,i,j] = sum_c a[b,c,y,x] src[b,c,y+i,x+j]: :func:`_conv`'s kernel gradient as a forward
    pass. Its gradients are :func:`_conv` itself (for ``a``) and :func:`_conv`'s source gradient."""

    @staticmethod
    def forward(ctx, a, src, budget):  # noqa: D401 (autograd signature)
        ctx.save_for_backward(a, src)
        ctx.budget = budget
        return _conv_grads(src, None, a, None, None, budget, False, True)[1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_corr):
        a, src = ctx.saved_tensors
        grad_corr = grad_corr.contiguous()
        grad_a = _conv(src, grad_corr, None, None, ctx.budget) if ctx.needs_input_grad[0] else None
        grad_src = None
        if ctx.needs_input_grad[1]:
            grad_src = _conv_grads(src, grad_corr, a, None, None, ctx.budget, True, False)[0]
        return grad_a, grad_src, None


def _resolve_budget(max_chunk_bytes: int | None, device: torch.device) -> int:
    budget = check_chunk_bytes(max_chunk_bytes)
    return default_chunk_bytes(device) if budget is None else budget


def _check_pair(src: object, kernel: object) -> tuple[torch.Tensor, torch.Tensor]:
    src = check_float_tensor(src, "src", (4,))
    kernel = check_float_tensor(kernel, "kernel", (5,))
    if kernel.dtype != src.dtype or kernel.device != src.device:
        raise ValueError(f"kernel must be {src.dtype} on {src.device} like src, got {kernel.dtype} on {kernel.device}")
    b, _, hs, ws = src.shape
    kb, h, w, kh, kw = kernel.shape
    if kb != b:
        raise ValueError(f"kernel batch size {kb} does not match src batch size {b}")
    if (hs, ws) != (h + kh - 1, w + kw - 1):
        raise ValueError(f"src must be padded to [B, C, H + kh - 1, W + kw - 1] = [{b}, C, {h + kh - 1}, "
                         f"{w + kw - 1}] for a kernel of shape {list(kernel.shape)}, got {list(src.shape)}")
    return src, kernel


def adaptive_conv(src: torch.Tensor, kernel: torch.Tensor, *, max_chunk_bytes: int | None = None) -> torch.Tensor:
    """Apply a per-pixel kernel, shared by all channels, in bounded-memory chunks.

    ``out[b, c, y, x] = sum_ij kernel[b, y, x, i, j] * src[b, c, y + i, x + j]`` (FeatUp's adaptive
    convolution, Fu et al. 2024, Sec. 3.2; see the module docstring for the chunking).

    Args:
        src: [B, C, H + kh - 1, W + kw - 1] floating-point source, already padded (e.g. reflect-padded
            by r = (k - 1) / 2 on each side for a centred k x k window).
        kernel: [B, H, W, kh, kw] per-pixel weights, same dtype and device as ``src``. Any values
            (they need not be normalised or positive).
        max_chunk_bytes: size bound of one block of output rows x channels, in bytes; None means
            :func:`default_chunk_bytes` (4 MiB on the CPU, 256 MiB on CUDA). Smaller blocks lower the
            peak memory of backward (one block-sized temporary) and raise the loop overhead.

    Returns:
        [B, C, H, W] tensor of ``src``'s dtype and device, differentiable with respect to ``src`` and
        ``kernel`` (first derivatives; the backward pass is not itself differentiable).

    Raises:
        TypeError: ``src`` or ``kernel`` is not a floating-point tensor.
        ValueError: wrong dimensions or shapes (batch sizes, padding), mismatched dtype / device,
            NaN / Inf values, a bad ``max_chunk_bytes``.
    """
    src, kernel = _check_pair(src, kernel)
    return _WindowConv.apply(src, kernel, None, None, _resolve_budget(max_chunk_bytes, src.device))


def local_correlation(a: torch.Tensor, src: torch.Tensor, *, max_chunk_bytes: int | None = None) -> torch.Tensor:
    """Per-pixel dot products with a window: ``corr[b, y, x, i, j] = sum_c a[b, c, y, x] * src[b, c, y + i, x + j]``.

    The adjoint of :func:`adaptive_conv` with respect to its kernel, chunked the same way. FeatUp's range
    kernel (Fu et al. 2024, Eq. 5) is the softmax of exp(tau) * local_correlation(q, pad(q)) over the
    window; computing it here keeps its memory at the [B, H, W, kh, kw] result plus one block, where
    per-tap autograd would keep a product per tap for backward.

    Args:
        a: [B, C, H, W] floating-point map.
        src: [B, C, H + kh - 1, W + kw - 1] (padded) map of the same dtype and device; the window size
            kh x kw follows from the shapes.
        max_chunk_bytes: see :func:`adaptive_conv`.

    Returns:
        [B, H, W, kh, kw], differentiable with respect to ``a`` and ``src``.

    Raises:
        TypeError: an input is not a floating-point tensor.
        ValueError: wrong dimensions, ``src`` smaller than ``a`` or with other batch size / channels,
            mismatched dtype / device, NaN / Inf, a bad ``max_chunk_bytes``.
    """
    a = check_float_tensor(a, "a", (4,))
    src = check_float_tensor(src, "src", (4,))
    if src.dtype != a.dtype or src.device != a.device:
        raise ValueError(f"src must be {a.dtype} on {a.device} like a, got {src.dtype} on {src.device}")
    if src.shape[:2] != a.shape[:2] or src.shape[2] < a.shape[2] or src.shape[3] < a.shape[3]:
        raise ValueError(f"src must be [B, C, H + kh - 1, W + kw - 1] with B, C, H, W from a {list(a.shape)}, "
                         f"got {list(src.shape)}")
    return _LocalCorrelation.apply(a, src, _resolve_budget(max_chunk_bytes, a.device))


def window_conv(src: torch.Tensor, kernel: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                max_chunk_bytes: int | None = None) -> torch.Tensor:
    """Adaptive convolution over arbitrary separable windows (used by the classical JBU).

    ``out[b, c, y, x] = sum_ij kernel[b, y, x, i, j] * src[b, c, rows[y, i], cols[x, j]]`` with
    ``src`` [B, C, h, w] (unpadded), ``kernel`` [B, H, W, kh, kw], ``rows`` [H, kh] and ``cols``
    [W, kw] int64 indices into ``src``'s rows and columns, non-decreasing along both axes of the
    tables (as a window sliding over the map gives them). Chunked and differentiable like
    :func:`adaptive_conv`. Inputs are checked by the caller (:mod:`air_core.jbu.classical`).
    """
    return _WindowConv.apply(src, kernel, rows, cols, _resolve_budget(max_chunk_bytes, src.device))


def adaptive_conv_reference(src: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The naive adaptive convolution: ``unfold`` + ``einsum`` (the test oracle and the cost baseline).

    Same contract as :func:`adaptive_conv`, but it materialises all kh * kw shifted copies of the
    source at once, a [B, C, kh * kw, H, W] tensor, so its memory grows with kh * kw times the output.

    Raises:
        TypeError / ValueError: as :func:`adaptive_conv`.
    """
    src, kernel = _check_pair(src, kernel)
    b, c = src.shape[:2]
    _, h, w, kh, kw = kernel.shape
    patches = F.unfold(src, (kh, kw)).view(b, c, kh * kw, h, w)
    return torch.einsum("bckhw,bhwk->bchw", patches, kernel.reshape(b, h, w, kh * kw))
