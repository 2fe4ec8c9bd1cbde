"""``ditkit bench-kernels``: every row kind with its keys, consistent with its own definitions (fraction of the
measured float32 peak, efficiency = speed-up x density), on tiny settings."""
import json

import pytest

from cli_util import cli_error, run_cli


def test_rows_of_every_kind(tmp_path):
    run_cli("bench-kernels", "--threads-list", "1", "--tokens", "64", "--forward-samples", "2", "--batches", "1",
            "--num-sampling-steps", "2", "--attention-tokens", "1024", "--gemm-size", "256", "--repeats", "1",
            "--json", tmp_path / "k.json")
    rows = json.loads((tmp_path / "k.json").read_text())["rows"]
    for row in rows:
        assert {"kind", "tokens", "samples", "threads", "config"} <= set(row)
    gemm = {r["config"]: r for r in rows if r["kind"] == "gemm"}
    assert set(gemm) == {"float32", "bfloat16", "int8"} and all(r["gflops_per_s"] > 0 for r in gemm.values())
    forward, = [r for r in rows if r["kind"] == "forward"]
    assert forward["fraction_of_peak"] == pytest.approx(forward["gflops_per_s"] / gemm["float32"]["gflops_per_s"])
    linear = 2 * 2 * 64 * 6 * 12 * 192 ** 2 / 1e9      # 2 samples x 64 tokens x 6 blocks x 12 D^2 weights, 2 FLOP each
    assert linear < forward["gflop"] < 1.1 * linear                     # + attention, patch embedding, head
    assert abs(sum(o["share"] for o in forward["top_ops"])) <= 1.0
    w8a8, = [r for r in rows if r["kind"] == "w8a8"]
    assert w8a8["speedup"] > 0 and w8a8["psnr"] > 30
    attention = [r for r in rows if r["kind"] == "attention"]
    assert {r["backend"] for r in attention} >= {"topk", "sta", "svg", "fastattn"}
    for r in attention:
        assert r["efficiency"] == pytest.approx(r["speedup"] * r["density"], abs=2e-3)


def test_bad_lists_are_refused():
    cli_error("bench-kernels", "--threads-list", "0", names=("--threads-list", ">= 1"))
    cli_error("bench-kernels", "--tokens", "100,200", "--threads-list", "1", "--batches", "1",
              "--attention-tokens", "0", "--gemm-size", "64", "--repeats", "1", names=("--tokens 200", "square"))
