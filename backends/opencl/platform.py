"""Finding an OpenCL device: pyopencl, the ICD platforms it sees, and why there may be none.

PoCL reports zero devices when it cannot create its kernel cache directory, so before the
first call into OpenCL we point ``POCL_CACHE_DIR`` at a writable folder under our own cache
(a user's setting is kept). Device selection, in order: the ``device=`` option
(``"platform:device"`` indices, or a platform index alone), ``PYOPENCL_CTX`` (same syntax),
else the best device found: a GPU before an accelerator before a CPU, and among PoCLs the
newest (Debian's PoCL 3.1 ran our kernels ~2.5x faster than the pip wheel's 3.0-rc2, and
both register a platform of the same name).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cnncompiler.errors import BackendUnavailableError, UnsupportedError

INSTALL_HINT = ("install a platform: Debian's `apt install pocl-opencl-icd` (recommended), or "
                "`pip install pocl-binary-distribution` (both work on a CPU-only machine); "
                "`pip install 'cnncompiler[opencl]'` installs pyopencl and the pip PoCL")


def prepare_environment() -> None:
    """Give PoCL a writable cache directory unless the user chose one."""
    if os.environ.get("POCL_CACHE_DIR"):
        return
    from cnncompiler.backends.llvm.cache import default_dir

    path = Path(default_dir()) / "pocl"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return   # the reason for zero devices is then given by unavailable_reason()
    os.environ["POCL_CACHE_DIR"] = str(path)


def import_pyopencl():
    """pyopencl, or BackendUnavailableError saying how to install it."""
    prepare_environment()
    try:
        import pyopencl
    except ImportError as e:
        raise BackendUnavailableError(f"pyopencl is not installed ({e}); "
                                      f"pip install 'cnncompiler[opencl]'") from e
    return pyopencl


@dataclass(frozen=True)
class DeviceInfo:
    platform_index: int
    device_index: int
    platform: str
    platform_version: str
    name: str
    kind: str            # "gpu", "accelerator", "cpu" or "other"
    driver: str
    fp64: bool

    @property
    def spec(self) -> str:
        return f"{self.platform_index}:{self.device_index}"

    def __str__(self) -> str:
        return (f"{self.spec} {self.name} ({self.kind}, {self.platform_version.split('  ')[0]}, "
                f"driver {self.driver})")


def _kind(cl, device) -> str:
    t = device.type
    if t & cl.device_type.GPU:
        return "gpu"
    if t & cl.device_type.ACCELERATOR:
        return "accelerator"
    if t & cl.device_type.CPU:
        return "cpu"
    return "other"


def _platforms(cl) -> list:
    try:
        return cl.get_platforms()
    except Exception as e:   # pyopencl raises LogicError/RuntimeError when the ICD finds none
        vendors = os.environ.get("OCL_ICD_VENDORS", "/etc/OpenCL/vendors")
        raise BackendUnavailableError(
            f"no OpenCL platform found ({type(e).__name__}: {e}); the ICD loader looked in "
            f"{vendors}; {INSTALL_HINT}") from e


def list_devices() -> list[DeviceInfo]:
    """Every OpenCL device of every platform (raises BackendUnavailableError if none)."""
    cl = import_pyopencl()
    platforms = _platforms(cl)
    found, empty = [], []
    for p, platform in enumerate(platforms):
        try:
            devices = platform.get_devices()
        except Exception:   # a platform with no device raises DEVICE_NOT_FOUND
            devices = []
        if not devices:
            empty.append(platform.name)
        for d, device in enumerate(devices):
            found.append(DeviceInfo(p, d, platform.name, platform.version, device.name.strip(),
                                    _kind(cl, device), device.driver_version,
                                    "cl_khr_fp64" in device.extensions))
    if not found:
        pocl = any("Portable Computing Language" in name for name in empty)
        hint = (f"; PoCL lists no device when it cannot create its cache directory: "
                f"POCL_CACHE_DIR={os.environ.get('POCL_CACHE_DIR')!r} must be writable"
                if pocl else "")
        raise BackendUnavailableError(f"OpenCL platform(s) {empty} have no device{hint}; "
                                      f"{INSTALL_HINT}")
    return found


_RANK = {"gpu": 0, "accelerator": 1, "cpu": 2, "other": 3}


def _version(text: str) -> tuple[int, ...]:
    match = re.search(r"PoCL (\d+)\.(\d+)", text)
    return tuple(int(x) for x in match.groups()) if match else (0, 0)


def _parse_spec(spec: str) -> tuple[int, int | None]:
    parts = str(spec).split(":")
    try:
        if len(parts) == 1 or (len(parts) == 2 and parts[1] == ""):
            return int(parts[0]), None
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise UnsupportedError(f"OpenCL device {spec!r}: expected 'platform:device' indices "
                           "such as '0:0', or a platform index")


def choose_device(spec: str | None = None) -> DeviceInfo:
    """The device ``spec`` names (see the module docstring), or the best one."""
    devices = list_devices()
    spec = spec if spec is not None else os.environ.get("PYOPENCL_CTX") or None
    if spec is None:
        return min(devices, key=lambda d: (_RANK[d.kind], tuple(-v for v in
                                                              _version(d.platform_version)),
                                           d.platform_index, d.device_index))
    platform, device = _parse_spec(spec)
    for d in devices:
        if d.platform_index == platform and d.device_index == (device or 0):
            return d
    listing = "\n  ".join(str(d) for d in devices)
    raise UnsupportedError(f"no OpenCL device {spec!r}; the devices here are:\n  {listing}")


def open_device(info: DeviceInfo):
    """(pyopencl module, device) for ``info``."""
    cl = import_pyopencl()
    return cl, _platforms(cl)[info.platform_index].get_devices()[info.device_index]
