#!/usr/bin/env python
"""Run the default benchmark suite and write benchmarks/results/<name>.json and .png.

    python benchmarks/run_benchmarks.py                 # the default list below
    python benchmarks/run_benchmarks.py --models lenet5,resnet18 --threads 1 --name quick

A thin wrapper around ``cnncompiler.bench`` (the same harness as ``cnnc bench``); see
benchmarks/README.md for what the columns mean.
"""

from __future__ import annotations

import argparse
import os
import sys

from cnncompiler import bench

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["lenet5", "alexnet", "resnet18", "mobilenet_v2", "resnet50", "vgg16"]
BACKENDS = ["llvm", "opencl", "onnxruntime", "torch"]  # a peer not installed is skipped, saying why
CELL_LIMIT_S = 150.0  # a backend whose cell (compile + warm-up + runs) takes longer is stopped


def _csv(text: str, kind=str) -> list:
    return [kind(p) for p in text.split(",") if p.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget", type=float, default=10.0, help="seconds of timed runs per cell")
    ap.add_argument("--cell-limit", type=float, default=CELL_LIMIT_S)
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default="latest", help="file name of the JSON and PNG")
    args = ap.parse_args(argv)

    config = bench.Config(models=_csv(args.models), backends=_csv(args.backends),
                          batches=_csv(args.batch, int), threads=_csv(args.threads, int),
                          repeat=args.repeat, warmup=args.warmup, budget_s=args.budget,
                          cell_limit_s=args.cell_limit)
    report = bench.run(config, log=lambda line: print(line, flush=True))
    os.makedirs(args.out_dir, exist_ok=True)
    json_path = os.path.join(args.out_dir, f"{args.name}.json")
    bench.write_json(report, json_path)
    print(f"wrote {json_path}")
    try:
        bench.check_plotting()
    except Exception as e:  # noqa: BLE001 - the JSON is the result; the plot is a view of it
        print(f"no plot: {e}")
    else:
        png_path = os.path.join(args.out_dir, f"{args.name}.png")
        bench.plot(report, png_path)
        print(f"wrote {png_path}")
    print(f"{report['seconds']:.0f} s")
    return 1 if any(r["failed"] for r in report["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
