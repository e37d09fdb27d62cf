"""AOT export: the shared library driven from a C program gives the JIT's outputs."""

import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("llvmlite")

import cnncompiler  # noqa: E402
from cnncompiler import zoo  # noqa: E402
from cnncompiler.errors import UnsupportedError  # noqa: E402

DRIVER = r"""
#include <stdio.h>
#include "lenet.h"
int main(int argc, char **argv) {
    static float x[LENET_INPUT0_SIZE], y[LENET_OUTPUT0_SIZE];
    FILE *f = fopen(argv[2], "rb");
    if (!f || fread(x, sizeof(float), LENET_INPUT0_SIZE, f) != LENET_INPUT0_SIZE) return 10;
    fclose(f);
    if (lenet_init(argv[1]) != 0) return 11;
    const float *inputs[] = {x};
    float *outputs[] = {y};
    if (lenet_run(inputs, outputs) != 0) return 12;
    f = fopen(argv[3], "wb");
    fwrite(y, sizeof(float), LENET_OUTPUT0_SIZE, f);
    fclose(f);
    lenet_free();
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")
def test_shared_library_driven_from_c(tmp_path):
    net = zoo.get("lenet5")
    cm = cnncompiler.compile(net, backend="llvm")
    files = cm.export(str(tmp_path / "lenet.so"), batch=1)
    assert set(files) == {"library", "header", "weights"}
    header = (tmp_path / "lenet.h").read_text()
    assert "int lenet_run(const float *const *inputs, float *const *outputs);" in header
    (tmp_path / "driver.c").write_text(DRIVER)
    subprocess.run(["cc", "-O2", "-o", str(tmp_path / "driver"), str(tmp_path / "driver.c"),
                    f"-I{tmp_path}", str(tmp_path / "lenet.so"), f"-Wl,-rpath,{tmp_path}"],
                   check=True)
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    x.tofile(tmp_path / "x.bin")
    subprocess.run([str(tmp_path / "driver"), files["weights"], str(tmp_path / "x.bin"),
                    str(tmp_path / "y.bin")], check=True)
    y = np.fromfile(tmp_path / "y.bin", np.float32).reshape(1, 10)
    np.testing.assert_allclose(y, cm(x), rtol=1e-6, atol=1e-6)


def test_export_needs_a_batch_and_the_llvm_backend(tmp_path):
    net = zoo.get("lenet5")
    with pytest.raises(UnsupportedError, match="batch=1"):
        cnncompiler.compile(net, backend="llvm").export(str(tmp_path / "m.so"))
    with pytest.raises(UnsupportedError, match="cannot export"):
        cnncompiler.compile(net).export(str(tmp_path / "m.so"), batch=1)
