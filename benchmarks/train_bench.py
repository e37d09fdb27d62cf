#!/usr/bin/env python
"""Training-step time against torch eager (the harness is ``cnncompiler.bench_train``).

    python benchmarks/train_bench.py                  # LeNet-5 batch 64, llvm, 1 and 2 threads
    python benchmarks/train_bench.py --backends llvm,opencl --threads 2 --steps 30
    python benchmarks/train_bench.py --model resnet18 --batch 8 --size 64   # the issue's target
"""

from __future__ import annotations

import argparse
import json
import sys

from cnncompiler import bench_train, zoo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5",
                    help="comma-separated zoo models (default lenet5)")
    ap.add_argument("--backends", default="llvm")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", type=int, default=None,
                    help="training batch (default 64 for lenet5, 8 otherwise)")
    ap.add_argument("--size", type=int, default=None,
                    help="input height and width (default the model's own)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    rows = []
    for model in args.model.split(","):
        shape = None
        if args.size:
            channels = zoo.get(model).input_shape[1]
            shape = (channels, args.size, args.size)
        rows += bench_train.run(args.backends.split(","),
                                [int(t) for t in args.threads.split(",")], args.batch,
                                args.steps, log=lambda line: print(line, flush=True),
                                model=model, input_shape=shape)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
