"""Per-kernel profiles, the same table for every backend: time, GFLOP/s, % of peak."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ProfileRow:
    node: str
    kind: str
    seconds: float
    flops: int

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9 if self.seconds > 0 else 0.0


@dataclass
class Profile:
    """Per-kernel times; ``peak`` is the FMA peak in GFLOP/s the kernels are measured against
    (``peak_label`` says whose: one CPU thread, an OpenCL device), None when unknown."""

    rows: list[ProfileRow]
    peak: float | None
    peak_label: str = "1 thread"

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.rows)

    def __str__(self) -> str:
        width = max([len(r.node) for r in self.rows] + [4])
        lines = [f"{'kernel':<{width}}  {'ops':<32} {'ms':>8} {'GFLOP/s':>8} {'% peak':>7}"]
        for r in self.rows:
            pct = f"{100 * r.gflops / self.peak:6.1f}%" if self.peak else "    n/a"
            lines.append(f"{r.node:<{width}}  {r.kind[:32]:<32} {r.seconds * 1e3:8.3f} "
                         f"{r.gflops:8.1f} {pct}")
        total_flops = sum(r.flops for r in self.rows)
        rate = total_flops / self.seconds / 1e9 if self.seconds else 0.0
        peak = (f"{self.peak:.0f} GFLOP/s FMA peak ({self.peak_label})" if self.peak
                else "peak unknown")
        lines.append(f"total {self.seconds * 1e3:.2f} ms, {rate:.1f} GFLOP/s; {peak}")
        return "\n".join(lines)


def kernel_row(node, k: int, seconds: float, flops: int) -> ProfileRow:
    """The profile row of the kernel computing output ``k`` of ``node``: a node with several
    outputs has one row per output (``name[k]``), each with its outputs' share of the FLOPs
    (by element count)."""
    kind = node.attrs.get("kind", node.op)
    if len(node.outputs) == 1:
        return ProfileRow(node.name, kind, seconds, flops)
    sizes = [v.type.numel() for v in node.outputs]
    return ProfileRow(f"{node.name}[{k}]", kind, seconds,
                      flops * sizes[k] // max(1, sum(sizes)))
