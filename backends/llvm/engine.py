"""JIT and AOT compilation of rendered LLVM modules for the host CPU.

:class:`JitEngine` owns a target machine for the host (CPU name and features), and an
MCJIT execution engine. ``compile(module)`` parses, verifies and optimises (new pass
manager, O3 with loop and SLP vectorisation) an llvmlite module, then makes its functions
callable through ctypes: ``function(name, num_pointer_args)`` for kernels and
``entry(name)`` for entry functions taking one ``void**``. Returned callables keep the
engine (and so the machine code) alive. ``emit_object`` produces a position-independent
ELF object for ahead-of-time use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import threading
from collections.abc import Sequence

from cnncompiler.errors import BackendUnavailableError, CnnCompilerError

try:
    import llvmlite.binding as llvm
except ImportError:  # pragma: no cover - exercised only without llvmlite
    llvm = None  # type: ignore[assignment]

_INIT_LOCK = threading.Lock()
_INITIALISED = False

# features worth naming in a one-line host description
_NOTABLE_FEATURES = (
    "sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
    "avx512vnni", "avx512bf16", "avx512fp16", "avxvnni", "amx-tile", "amx-bf16",
    "amx-int8", "neon", "fp-armv8", "dotprod", "fullfp16", "bf16", "i8mm", "sve", "sve2",
    "sme", "v", "zvfh",
)


def _ensure_llvm() -> None:
    """Initialise LLVM's native target once per process; make libm visible to the JIT."""
    global _INITIALISED
    if llvm is None:
        raise BackendUnavailableError(
            "the LLVM backend needs llvmlite (pip install llvmlite); it is not installed"
        )
    if _INITIALISED:
        return
    with _INIT_LOCK:
        if _INITIALISED:
            return
        try:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            llvm.initialize_native_asmparser()
        except Exception as exc:  # noqa: BLE001 - any failure means no native backend
            raise BackendUnavailableError(
                f"LLVM cannot generate code for this machine: {exc}") from exc
        # loops of 8 (a channel block's lanes) are worth one 8-wide vector: LLVM's default
        # skips loops shorter than 16, which with the SLP vectoriser off left them scalar
        llvm.set_option("cnncompiler", "-vectorizer-min-trip-count=8")
        if not llvm.address_of_symbol("expf"):
            libm = ctypes.util.find_library("m")
            if libm:
                try:
                    llvm.load_library_permanently(libm)
                except RuntimeError:
                    pass
        _INITIALISED = True


def host_cpu() -> tuple[str, str]:
    """(LLVM CPU name, feature string) of this machine."""
    _ensure_llvm()
    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def host_description(cpu: str | None = None, features: str | None = None) -> str:
    """A short human description of the host (or given) CPU, e.g. ``znver3 (+avx2,+fma)``."""
    if cpu is None or features is None:
        host_name, host_features = host_cpu()
        cpu = host_name if cpu is None else cpu
        features = host_features if features is None else features
    enabled = [f[1:] for f in features.split(",") if f.startswith("+")]
    notable = [f for f in _NOTABLE_FEATURES if f in enabled]
    shown = notable or enabled[:8]
    return f"{cpu} ({','.join('+' + f for f in shown)})" if shown else cpu


class NativeFunction:
    """A ctypes-callable native function; holds its engine so the code stays mapped.

    Arguments are addresses (ints, ``ctypes`` pointers or arrays, ``ndarray.ctypes.data``).
    ctypes releases the GIL for the duration of the call.
    """

    __slots__ = ("name", "address", "num_args", "cfunc", "_engine")

    def __init__(self, engine: JitEngine, name: str, address: int, num_args: int) -> None:
        self.name = name
        self.address = address
        self.num_args = num_args
        self.cfunc = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * num_args))(address)
        self._engine = engine

    def __call__(self, *args) -> None:
        self.cfunc(*args)

    def __repr__(self) -> str:
        return f"<NativeFunction {self.name}({self.num_args} pointers) at {self.address:#x}>"


class JitEngine:
    """Compiles llvmlite modules for the host CPU and hands out their functions."""

    def __init__(self, *, opt_level: int = 3, cpu: str | None = None,
                 features: str | None = None) -> None:
        _ensure_llvm()
        host_name, host_features = host_cpu()
        self._cpu = host_name if cpu is None else cpu
        self._features = host_features if features is None else features
        self._opt = int(opt_level)
        self._target = llvm.Target.from_default_triple()
        self._tm = self._target.create_target_machine(
            cpu=self._cpu, features=self._features, opt=self._opt, jit=True)
        self._aot_tm = None
        self._lock = threading.RLock()
        owner = llvm.parse_assembly("")
        self._prepare(owner, self._tm)
        self._ee = llvm.create_mcjit_compiler(owner, self._tm)
        self._functions: dict[str, int] = {}
        self._modules: list = []  # ModuleRefs owned by the execution engine

    # ------------------------------------------------------------------ properties
    @property
    def cpu_name(self) -> str:
        return self._cpu

    @property
    def cpu_features(self) -> str:
        return self._features

    @property
    def triple(self) -> str:
        return self._tm.triple

    @property
    def target_machine(self):
        return self._tm

    def host_description(self) -> str:
        return host_description(self._cpu, self._features)

    # ------------------------------------------------------------------ compilation
    def _prepare(self, mod, tm) -> None:
        mod.triple = tm.triple
        mod.data_layout = str(tm.target_data)

    def parse(self, module, tm=None):
        """Parse and verify ``module`` (llvmlite ``ir.Module`` or IR text): a ModuleRef."""
        text = str(module)
        name = getattr(module, "name", None) or "<module>"
        try:
            mod = llvm.parse_assembly(text)
            mod.verify()
        except RuntimeError as exc:
            raise CnnCompilerError(_describe_failure(name, text, str(exc))) from exc
        self._prepare(mod, tm or self._tm)
        return mod

    def optimize(self, module, tm=None):
        """Parse, verify and optimise ``module`` (O3 with the loop vectoriser): a ModuleRef.

        The SLP vectoriser stays off: with unrolling it aborts LLVM 22 (an assertion in
        ``Value::doRAUW``) on small gather loops such as the NCHW -> NCHW8c re-laying of a
        [1, 16, 6, 3] tensor, and a compiler must not crash; schedules that want SIMD write
        it explicitly (f32x8) or as "vector" loops. Costs 2-5% on the zoo nets.

        Useful for inspecting the optimised IR; ``compile`` does the same and JITs it.
        """
        tm = tm or self._tm
        mod = module if isinstance(module, llvm.ModuleRef) else self.parse(module, tm)
        if self._opt > 0:
            pto = llvm.create_pipeline_tuning_options(speed_level=min(self._opt, 3))
            pto.loop_vectorization = True
            pto.slp_vectorization = False
            pto.loop_unrolling = True
            pto.loop_interleaving = True
            pb = llvm.create_pass_builder(tm, pto)
            pb.getModulePassManager().run(mod, pb)
        return mod

    @property
    def opt_level(self) -> int:
        return self._opt

    def object_key(self, fingerprint: str) -> str:
        """Compile-cache key of the object code of a module that ``fingerprint`` (its kernel
        IR) determines: also the CPU, optimisation level, versions and backend sources."""
        import llvmlite

        import cnncompiler
        from cnncompiler.backends.llvm.cache import cache_key, code_digest

        return cache_key(fingerprint, self._cpu, self._features, str(self._opt),
                         cnncompiler.__version__, llvmlite.__version__,
                         ".".join(map(str, llvm.llvm_version_info)), code_digest())

    def load_objects(self, objects: Sequence[bytes], names: Sequence[str]) -> None:
        """Link object files (see :meth:`emit_object`) into the JIT and look up ``names``."""
        with self._lock:
            clash = [n for n in names if n in self._functions]
            if clash:
                raise CnnCompilerError(
                    f"function(s) {', '.join(clash)} already compiled in this engine")
            for obj in objects:
                self._ee.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self._ee.finalize_object()
            for n in names:
                self._functions[n] = self._ee.get_function_address(n)

    def compile(self, module) -> list[str]:
        """JIT-compile ``module``; returns the names of the functions it defines."""
        with self._lock:
            mod = self.optimize(module)
            names = [f.name for f in mod.functions if not f.is_declaration]
            clash = [n for n in names if n in self._functions]
            if clash:
                raise CnnCompilerError(
                    f"function(s) {', '.join(clash)} already compiled in this engine")
            self._ee.add_module(mod)
            self._ee.finalize_object()
            self._modules.append(mod)
            for n in names:
                self._functions[n] = self._ee.get_function_address(n)
            return names

    def address(self, name: str) -> int:
        try:
            return self._functions[name]
        except KeyError:
            raise CnnCompilerError(f"no compiled function named '{name}'") from None

    def function(self, name: str, num_pointer_args: int) -> NativeFunction:
        """``void name(void*, ...)`` with ``num_pointer_args`` pointer parameters."""
        return NativeFunction(self, name, self.address(name), num_pointer_args)

    def entry(self, name: str) -> NativeFunction:
        """An entry function ``void name(void** args)`` (see ``render.add_entry``)."""
        return NativeFunction(self, name, self.address(name), 1)

    # ------------------------------------------------------------------ ahead of time
    def _aot_machine(self):
        """Position-independent, small code model: constants are addressed relative to the
        instruction pointer. (The default here is the large model, whose GOT-relative
        relocations the JIT's linker resolves wrongly once several objects are loaded:
        the second object's constants were read from the first one's.)"""
        if self._aot_tm is None:
            self._aot_tm = self._target.create_target_machine(
                cpu=self._cpu, features=self._features, opt=self._opt, reloc="pic",
                codemodel="small")
        return self._aot_tm

    def emit_object(self, module) -> bytes:
        """Optimised, position-independent object code (ELF on Linux) for ``module``."""
        with self._lock:
            tm = self._aot_machine()
            return tm.emit_object(self.optimize(module, tm))

    def emit_assembly(self, module) -> str:
        """Optimised host assembly for ``module`` (for inspection)."""
        with self._lock:
            return self._tm.emit_assembly(self.optimize(module))


def _describe_failure(name: str, text: str, message: str) -> str:
    """An LLVM parse/verify error, naming the function(s) it concerns where possible."""
    functions = re.findall(r'^define [^@]*@"?([^"(\s]+)"?\(', text, flags=re.M)
    culprits = []
    m = re.search(r"<string>:(\d+):", message)
    if m:  # parse error: find the function enclosing the line
        line = int(m.group(1))
        current = None
        for i, row in enumerate(text.splitlines(), start=1):
            if i > line:
                break
            d = re.match(r'define [^@]*@"?([^"(\s]+)"?\(', row)
            if d:
                current = d.group(1)
        if current:
            culprits.append(current)
    else:
        culprits = [f for f in functions if re.search(rf"@\"?{re.escape(f)}\b", message)]
    where = f"kernel(s) {', '.join(repr(c) for c in culprits)} in " if culprits else ""
    return f"LLVM rejected {where}module '{name}': {message.strip()}"
