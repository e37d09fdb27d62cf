"""Sliding-window arithmetic shared by convolution and pooling (the lecture's formula).

W2 = (W1 - F + P_begin + P_end) / S + 1, with F the dilated extent (F - 1)*D + 1.
With ``rounding="exact"`` a fractional W2 is an error that shows the arithmetic; "floor" is
what PyTorch/ONNX do (the last, partly-covered window is dropped); "ceil" is pooling's
``ceil_mode`` (a last partial window is kept if it starts inside the input or left padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnncompiler.ops.opdef import REQUIRED, Attr, InferContext

ROUNDING = ("exact", "floor", "ceil")
AXIS_NAMES = ("height", "width")


def positive(values: tuple) -> str | None:
    return None if all(v >= 1 for v in values) else "every entry must be >= 1"


def non_negative(values: tuple) -> str | None:
    return None if all(v >= 0 for v in values) else "every entry must be >= 0"


def pair_or_quad(values: tuple) -> str | None:
    return None if len(values) == 4 else "give 4 pads: [top, left, bottom, right]"


def window_attrs(kernel_required: bool, with_dilation: bool, rounding_choices=ROUNDING
                 ) -> tuple[Attr, ...]:
    """The attributes of a 2-D sliding-window op, ONNX names and pad order."""
    attrs = [
        Attr("kernel_shape", "ints", REQUIRED if kernel_required else None,
             "window extent [F_h, F_w]", check=positive),
        Attr("strides", "ints", (1, 1), "stride [S_h, S_w]", check=positive),
        Attr("pads", "ints", (0, 0, 0, 0), "zero padding [top, left, bottom, right]",
             check=lambda v: pair_or_quad(v) or non_negative(v)),
    ]
    if with_dilation:
        attrs.append(Attr("dilations", "ints", (1, 1), "dilation [D_h, D_w]", check=positive))
    attrs.append(Attr("rounding", "str", "exact", "what to do when (W1 - F + 2P)/S + 1 is "
                      "fractional", choices=rounding_choices))
    return tuple(attrs)


def check_2d(ctx: InferContext, name: str, values: tuple | None, n: int = 2) -> tuple:
    if values is None or len(values) != n:
        raise ctx.bad_attr(f"attribute '{name}' must have {n} entries for a 2-D op, "
                           f"got {values}")
    return values


def window_out(ctx: InferContext, axis: str, size: int | str, kernel: int, stride: int,
               pad_begin: int, pad_end: int, dilation: int = 1, rounding: str = "exact") -> int:
    """Output extent along one spatial axis; raises a ShapeError that shows the arithmetic."""
    if isinstance(size, str):
        raise ctx.fail(f"spatial {axis} must be a concrete size, got symbol {size!r}")
    extent = (kernel - 1) * dilation + 1
    padded = size + pad_begin + pad_end
    formula = (f"(W1 - F + P_begin + P_end)/S + 1 = ({size} - {extent} + {pad_begin} + "
               f"{pad_end})/{stride} + 1")
    if padded < extent:
        raise ctx.fail(f"{axis}: the window extent F={extent} is larger than the padded input "
                       f"{size} + {pad_begin} + {pad_end} = {padded}")
    span = padded - extent
    if span % stride == 0 or rounding == "floor":
        return span // stride + 1
    if rounding == "ceil":
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + pad_begin:  # last window would start in the end padding
            out -= 1
        return out
    raise ctx.fail(f"output {axis} {formula} = {span / stride + 1:g} is not an integer; "
                   "change padding or stride so the windows tile the input, or set "
                   "rounding='floor' to drop the partial window")


def spatial_out(ctx: InferContext, hw: Sequence[int | str], kernel: tuple, strides: tuple,
                pads: tuple, dilations: tuple = (1, 1)) -> tuple[int, int]:
    rounding = ctx.attrs.get("rounding", "exact")
    return tuple(window_out(ctx, AXIS_NAMES[i], hw[i], kernel[i], strides[i], pads[i],
                            pads[i + 2], dilations[i], rounding) for i in range(2))


def pad_nchw(x: np.ndarray, pads: tuple, value: float = 0.0) -> np.ndarray:
    t, l, b, r = pads
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)


def window_views(xp: np.ndarray, kernel: tuple, strides: tuple, dilations: tuple,
                 out_hw: tuple[int, int]):
    """Yield ((i, j), view) for each kernel tap: view[n, c, oh, ow] = xp at that tap."""
    (sh, sw), (dh, dw), (oh, ow) = strides, dilations, out_hw
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield (i, j), xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                             j * dw: j * dw + sw * (ow - 1) + 1: sw]


def end_padding_for(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                    dilation: int, out: int) -> int:
    """How much end padding the reference needs so every one of ``out`` windows is in range."""
    extent = (kernel - 1) * dilation + 1
    needed = (out - 1) * stride + extent - size - pad_begin
    return max(needed, 0) if needed > pad_end else pad_end
