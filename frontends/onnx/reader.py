"""Reading an ONNX file safely: parse, check, and load external data only from the model's
own directory. Everything that can go wrong becomes a FrontendError, never a crash."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from cnncompiler.errors import FrontendError

MIN_OPSET = 7


def read_model(source: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """An in-memory ModelProto with external data loaded and ``onnx.checker`` passed."""
    base_dir: Path | None = None
    if isinstance(source, onnx.ModelProto):
        model = source
    elif isinstance(source, (bytes, bytearray)):
        model = _parse(bytes(source), "<bytes>")
    else:
        path = Path(source)
        if not path.is_file():
            raise FrontendError(f"ONNX file {str(path)!r} does not exist")
        model = _parse(path.read_bytes(), str(path))
        base_dir = path.resolve().parent
    _load_external_data(model, base_dir)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FrontendError(f"the ONNX model is invalid (onnx.checker): {first}") from None
    check_opsets(model)
    return model


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise FrontendError(f"{label} is not a valid ONNX file (truncated or corrupt protobuf: "
                            f"{e})") from None
    if not model.HasField("graph"):
        raise FrontendError(f"{label} is not a valid ONNX file: it has no graph")
    return model


def _external_tensors(model: onnx.ModelProto):
    yield from external_data_helper._get_all_tensors(model)  # noqa: SLF001 (public in spirit)


def _load_external_data(model: onnx.ModelProto, base_dir: Path | None) -> None:
    """Resolve external-data tensors, refusing any location outside the model's directory."""
    external = [t for t in _external_tensors(model) if external_data_helper.uses_external_data(t)]
    if not external:
        return
    if base_dir is None:
        raise FrontendError(f"tensor {external[0].name!r} keeps its data in an external file; "
                            "load the model from its path so the file can be found")
    for t in external:
        info = external_data_helper.ExternalDataInfo(t)
        location = info.location
        target = (base_dir / location).resolve()
        if (not location or os.path.isabs(location) or ".." in Path(location).parts
                or base_dir not in target.parents):
            raise FrontendError(f"tensor {t.name!r}: external data location {location!r} is "
                                "outside the model's directory; only relative paths inside it "
                                "are read")
        if not target.is_file():
            raise FrontendError(f"tensor {t.name!r}: external data file {location!r} is missing")
        size = target.stat().st_size
        end = (info.offset or 0) + (info.length or 0)
        if end > size:
            raise FrontendError(f"tensor {t.name!r}: external data range ends at byte {end} "
                                f"but {location!r} has {size} bytes")
    try:
        external_data_helper.load_external_data_for_model(model, str(base_dir))
    except (OSError, ValueError) as e:
        raise FrontendError(f"cannot read external data: {e}") from None


def check_opsets(model: onnx.ModelProto) -> int:
    """The default-domain opset, checked to be one this importer handles."""
    versions = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    if "ai.onnx" not in versions:
        raise FrontendError("the model imports no version of the default ONNX domain "
                            "(opset_import lacks domain '')")
    opset = versions["ai.onnx"]
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        raise FrontendError(f"opset {opset} is older than the oldest supported ({MIN_OPSET}); "
                            "upgrade it with onnx.version_converter.convert_version(model, 13)")
    if opset > newest:
        raise FrontendError(f"opset {opset} is newer than this onnx package knows ({newest}); "
                            "upgrade the onnx package")
    return opset
