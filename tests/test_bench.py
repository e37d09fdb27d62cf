"""``cnnc bench``: the benchmark harness against onnxruntime (LeNet-5 only: it stays fast)."""

import json

import pytest
from click.testing import CliRunner

from cnncompiler.cli import main

pytest.importorskip("onnxruntime")


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_bench_lenet5_llvm_against_onnxruntime(tmp_path):
    out = tmp_path / "bench.json"
    r = invoke("bench", "lenet5", "--backends", "llvm,onnxruntime", "--repeat", "3",
               "--warmup", "1", "--json", str(out))
    assert r.exit_code == 0, r.output
    assert "median ms" in r.output and "vs ORT" in r.output
    report = json.loads(out.read_text())
    rows = {row["backend"]: row for row in report["rows"]}
    assert set(rows) == {"llvm", "onnxruntime"}
    for row in rows.values():
        assert row["model"] == "lenet5" and row["batch"] == 1 and row["threads"] == 1
        assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"]
        assert row["runs"] == 3 and len(row["times_ms"]) == 3
        assert row["compile_s"] > 0 and row["rss_mb"] > 0
        assert row["gflop_per_s"] > 0 and not row["failed"]
    llvm = rows["llvm"]
    assert llvm["ratio_vs_onnxruntime"] == pytest.approx(
        llvm["median_ms"] / rows["onnxruntime"]["median_ms"])
    assert llvm["outputs_match"] is True and llvm["max_rel_err"] < 1e-3
    assert rows["onnxruntime"]["ratio_vs_onnxruntime"] == 1.0
    assert report["baseline"] == "onnxruntime"
    machine = report["machine"]
    assert machine["cores"] >= 1 and "numpy" in machine["versions"]
    assert "onnxruntime" in machine["versions"]


def test_bench_rejects_an_unknown_backend():
    r = invoke("bench", "lenet5", "--backends", "llvm,nosuch")
    assert r.exit_code == 2
    assert "unknown backend" in r.output and "nosuch" in r.output and "onnxruntime" in r.output


def test_bench_rejects_an_unknown_model():
    r = invoke("bench", "lenet5,nosuchnet")
    assert r.exit_code == 2
    assert "unknown model 'nosuchnet'" in r.output and "resnet18" in r.output
    r = invoke("bench", "missing.onnx")
    assert r.exit_code == 2 and "does not exist" in r.output


def test_bench_flags_wrong_outputs(tmp_path, monkeypatch):
    """A backend whose output differs from onnxruntime's is flagged (exit 1), not silently
    timed."""
    from cnncompiler import bench

    real = bench._rel_err
    monkeypatch.setattr(bench, "_rel_err", lambda got, want: real(got, want) + 0.5)
    out = tmp_path / "bench.json"
    r = invoke("bench", "lenet5", "--backends", "reference", "--repeat", "1", "--warmup", "1",
               "--json", str(out))
    assert r.exit_code == 1, r.output
    assert "MISMATCH" in r.output and "flagged" in r.output
    ref = next(row for row in json.loads(out.read_text())["rows"]
               if row["backend"] == "reference")
    assert ref["outputs_match"] is False and ref["failed"]


def test_relative_error_is_normwise_and_catches_shape_changes():
    import numpy as np

    from cnncompiler.bench import _rel_err

    want = {"y": np.array([1.0, -100.0])}
    assert _rel_err({"y": np.array([1.5, -100.0])}, want) == pytest.approx(0.005)
    assert _rel_err({"y": np.array([1.0, -100.0, 0.0])}, want) == float("inf")
    assert _rel_err({"y": np.array([np.nan, -100.0])}, want) == float("inf")


def test_training_bench_times_compiled_steps(tmp_path):
    """``cnnc bench lenet5 --train``: a row per contender; where torch is installed its
    loss after the same steps agrees with ours (the same work is timed)."""
    out = tmp_path / "train.json"
    result = CliRunner().invoke(main, ["bench", "lenet5", "--train", "--backends", "llvm",
                                       "--threads", "1", "--repeat", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["backend"]: r for r in json.loads(out.read_text())}
    assert rows["llvm"]["median_ms"] > 0 and rows["llvm"]["batch"] == 64
    if "torch" in rows:
        assert abs(rows["llvm"]["loss"] - rows["torch"]["loss"]) < 1e-4
    bad = CliRunner().invoke(main, ["bench", "nosuchnet", "--train"])
    assert bad.exit_code != 0 and "lenet5" in bad.output   # the zoo models are listed


def test_multithreaded_runs_are_settled_for_every_contender(tmp_path, monkeypatch):
    """With threads > 1 each timed run of each backend follows a pause (another
    contender's spinning pool goes idle) and an untimed run of its own (its threads wake):
    the same treatment for all, whichever order the round takes."""
    import numpy as np

    from cnncompiler import bench

    events = []

    class FakeWorker:
        def __init__(self, spec, workdir, limit_s):
            self.spec, self.ready, self.used_s = spec, {"rss_mb": 1.0}, 0.0

        def ask(self, cmd):
            b = self.spec["backend"]
            if cmd == "compile":
                return {"compile_s": 0.1, "compile_cached_s": None, "threads_applied": True}
            if cmd == "run":
                events.append(("run", b))
                return {"t": 0.001}
            np.savez(self.spec["output_path"], y=np.ones(3, np.float32))
            return {"rss_mb": 1.0}

        def ticks(self):
            return 0

        def close(self):
            pass

    monkeypatch.setattr(bench, "_Worker", FakeWorker)
    monkeypatch.setattr(bench.time, "sleep", lambda s: events.append(("sleep", s)))
    config = bench.Config(models=["m"], repeat=4, warmup=1, budget_s=10.0)
    prep = {"name": "m", "gflop": 1.0, "kind": "zoo", "onnx_path": "", "input_path": ""}
    rows = bench._bench_cell("m", prep, 1, 2, ["llvm", "onnxruntime"], config, str(tmp_path),
                             lambda line: None)
    assert all(r.runs == 4 for r in rows)
    # every run is one of: pause, untimed run, timed run of the same backend
    assert len(events) % 3 == 0
    for i in range(0, len(events), 3):
        (pause, _), (_, b1), (_, b2) = events[i:i + 3]
        assert pause == "sleep" and b1 == b2
    firsts = [events[i + 1][1] for i in range(0, len(events), 3)]
    assert firsts.count("llvm") == firsts.count("onnxruntime")
