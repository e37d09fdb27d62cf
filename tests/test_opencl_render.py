"""The OpenCL C renderer on hand-written kernel IR: semantics the graph-level tests reach only
indirectly (floor division and modulo of negative numbers, guarded loads, vector selects,
scratch), run on this machine's OpenCL device, and its errors."""

import numpy as np
import pytest
from helpers import require_backend

from cnncompiler.backends.opencl.render import PRIVATE_LIMIT, program_source, render_kernel
from cnncompiler.errors import CnnCompilerError
from cnncompiler.kernel import ir as K


def run(kernel: K.Kernel, *arrays: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Build ``kernel`` for the chosen device and run it on ``arrays`` -> ``out``."""
    require_backend("opencl")
    from cnncompiler.backends.opencl.platform import choose_device, open_device

    cl, device = open_device(choose_device())
    ctx = cl.Context([device])
    queue = cl.CommandQueue(ctx)
    rendered = render_kernel(kernel)
    program = cl.Program(ctx, program_source([rendered])).build(["-cl-std=CL1.2", "-Werror"])
    mf = cl.mem_flags
    buffers = [cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=a) for a in arrays]
    result = cl.Buffer(ctx, mf.READ_WRITE, out.nbytes)
    args = [*buffers, result]
    if rendered.scratch_bytes:
        args.append(cl.Buffer(ctx, mf.READ_WRITE, rendered.scratch_bytes * rendered.work_items))
    getattr(program, kernel.name)(queue, rendered.global_size, None, *args)
    cl.enqueue_copy(queue, out, result)
    return out


def elementwise(name: str, n: int, dtype: str, fn, in_dtype: str | None = None) -> K.Kernel:
    a, b = K.Buffer("a", in_dtype or dtype, n), K.Buffer("b", in_dtype or dtype, n)
    out = K.Buffer("out", dtype, n)
    i = K.Var("i")
    body = [K.Loop(i, K.Const(0), K.Const(n),
                   [K.Store(out, i, fn(K.Load(a, i), K.Load(b, i)))], "parallel")]
    return K.Kernel(name, [a, b, out], body)


def test_integer_floor_division_and_modulo_follow_python():
    x = np.array([7, -7, 7, -7, 0, -1, 13, -13], np.int64)
    y = np.array([2, 2, -2, -2, 3, 4, -5, 5], np.int64)
    div = run(elementwise("int_div", 8, "i64", lambda a, b: a // b), x, y,
              out=np.empty(8, np.int64))
    mod = run(elementwise("int_mod", 8, "i64", lambda a, b: a % b), x, y,
              out=np.empty(8, np.int64))
    np.testing.assert_array_equal(div, x // y)
    np.testing.assert_array_equal(mod, x % y)


def _index_arith_kernel(offset: int) -> K.Kernel:
    """out[i] = (i - offset) // 3 * 10 + (i - offset) % 3, as floats: index arithmetic only."""
    out, i = K.Buffer("out", "f32", 8), K.Var("i")
    j = i - offset
    value = K.Cast(j // 3 * 10 + j % 3, "f32")
    return K.Kernel("index_arith", [out],
                    [K.Loop(i, K.Const(0), K.Const(8), [K.Store(out, i, value)], "parallel")])


@pytest.mark.parametrize("offset", [5, 2**40])
def test_index_arithmetic_is_32_bit_unless_a_value_needs_64(offset):
    """A kernel without int64 data computes its indices in int (GPUs emulate 64-bit
    integer arithmetic); a constant beyond 32 bits keeps it in long. Both floor like Python."""
    kernel = _index_arith_kernel(offset)
    source = render_kernel(kernel).source
    assert ("long" in source) == (offset > 2**31)
    assert "long" in render_kernel(kernel, int_indices=False).source   # a CPU device's
    got = run(kernel, out=np.empty(8, np.float32))
    j = np.arange(8) - offset
    np.testing.assert_array_equal(got, (j // 3 * 10 + j % 3).astype(np.float32))


def test_float_floor_division_and_modulo_follow_python():
    x = np.array([7.5, -7.5, 7.5, -7.5, 1.0, -0.25], np.float32)
    y = np.array([2.0, 2.0, -2.0, -2.0, 0.5, 3.0], np.float32)
    div = run(elementwise("float_div", 6, "f32", lambda a, b: a // b), x, y,
              out=np.empty(6, np.float32))
    mod = run(elementwise("float_mod", 6, "f32", lambda a, b: a % b), x, y,
              out=np.empty(6, np.float32))
    np.testing.assert_array_equal(div, np.floor_divide(x, y))
    np.testing.assert_allclose(mod, np.mod(x, y), rtol=1e-6)


def test_guarded_load_is_never_performed_out_of_bounds():
    """out[i] = x[i - 2] if i >= 2 else -1: the select becomes an if, not an eager load."""
    x = np.arange(1, 9, dtype=np.float32)
    xb, out = K.Buffer("x", "f32", 8), K.Buffer("out", "f32", 10)
    i = K.Var("i")
    value = K.select(i.ge(2), K.Load(xb, i - 2), -1.0)
    kernel = K.Kernel("shift", [xb, out],
                      [K.Loop(i, K.Const(0), K.Const(10), [K.Store(out, i, value)], "parallel")])
    assert "if (" in render_kernel(kernel).source
    got = run(kernel, x, out=np.empty(10, np.float32))
    np.testing.assert_array_equal(got, np.concatenate([[-1, -1], x]))


def test_float8_vectors_fma_and_lane_select():
    """out[8j:8j+8] = max(fma(a, b, 1), 0) lane-wise through a vector select."""
    n = 32
    a, b, out = K.Buffer("a", "f32", n), K.Buffer("b", "f32", n), K.Buffer("out", "f32", n)
    j = K.Var("j")
    va, vb = K.Load(a, j * 8, lanes=8), K.Load(b, j * 8, lanes=8)
    acc = K.fma(va, vb, K.broadcast(1.0, 8))
    zero = K.broadcast(0.0, 8)
    value = K.select(acc.gt(zero), acc, zero)
    kernel = K.Kernel("vec", [a, b, out],
                      [K.Loop(j, K.Const(0), K.Const(n // 8), [K.Store(out, j * 8, value)],
                              "parallel")])
    source = render_kernel(kernel).source
    assert "float8" in source and "vload8" in source and "vstore8" in source
    x, y = (np.random.default_rng(s).standard_normal(n).astype(np.float32) for s in (0, 1))
    got = run(kernel, x, y, out=np.empty(n, np.float32))
    np.testing.assert_allclose(got, np.maximum(x * y + 1, 0), rtol=1e-6)


@pytest.mark.parametrize("size", [16, PRIVATE_LIMIT])   # private array, global scratch
def test_local_scratch_private_or_global(size):
    """A per-work-item scratch array: reversed copy of each row through the scratch."""
    rows = 3
    x, out = K.Buffer("x", "f32", rows * size), K.Buffer("out", "f32", rows * size)
    tmp = K.Buffer("tmp", "f32", size)
    r, c = K.Var("r"), K.Var("c")
    body = [K.Local(tmp),
            K.Loop(c, K.Const(0), K.Const(size), [K.Store(tmp, c, K.Load(x, r * size + c))]),
            K.Loop(c, K.Const(0), K.Const(size),
                   [K.Store(out, r * size + c, K.Load(tmp, size - 1 - c))])]
    kernel = K.Kernel("rev", [x, out], [K.Loop(r, K.Const(0), K.Const(rows), body, "parallel")])
    rendered = render_kernel(kernel)
    assert (rendered.scratch_bytes > 0) == (size * 4 > PRIVATE_LIMIT)
    data = np.random.default_rng(0).standard_normal(rows * size).astype(np.float32)
    got = run(kernel, data, out=np.empty(rows * size, np.float32))
    np.testing.assert_array_equal(got.reshape(rows, size), data.reshape(rows, size)[:, ::-1])


def test_errors_name_the_kernel():
    out = K.Buffer("out", "f32", 4)
    i, ghost = K.Var("i"), K.Var("ghost", "f32")
    bad_kind = K.Kernel("bad_kind", [out], [K.Loop(i, K.Const(0), K.Const(4),
                                                   [K.Store(out, i, K.Const(1.0, "f32"))],
                                                   "sideways")])
    with pytest.raises(CnnCompilerError, match="kernel 'bad_kind'.*loop kind"):
        render_kernel(bad_kind)
    undeclared = K.Kernel("undeclared", [out], [K.Loop(i, K.Const(0), K.Const(4),
                                                       [K.Store(out, i, ghost)])])
    with pytest.raises(CnnCompilerError, match="kernel 'undeclared'.*ghost"):
        render_kernel(undeclared)
    wrong_store = K.Kernel("wrong_store", [out], [K.Store(out, K.Const(0), K.Const(1))])
    with pytest.raises(CnnCompilerError, match="kernel 'wrong_store'.*store of a i64"):
        render_kernel(wrong_store)
