#!/usr/bin/env python
"""Training-step time against torch eager (the harness is ``cnncompiler.bench_train``).

    python benchmarks/train_bench.py                  # LeNet-5 batch 64, llvm, 1 and 2 threads
    python benchmarks/train_bench.py --backends llvm,opencl --threads 2 --steps 30
"""

from __future__ import annotations

import argparse
import json
import sys

from cnncompiler import bench_train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="llvm")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    rows = bench_train.run(args.backends.split(","), [int(t) for t in args.threads.split(",")],
                           args.batch, args.steps, log=lambda line: print(line, flush=True))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
