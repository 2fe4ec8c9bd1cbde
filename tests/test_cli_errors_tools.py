"""`ditkit bench-attention`, `distill-linear`, `calibrate` and `quantize` with bad or unusual input: a clear error
naming the value and the fix before any work (exit 2, no traceback, nothing written); short sequences benchmark."""
import json

import pytest

from cli_util import cli_error, run_cli, tmp_filler
from ditkit.core import checkpoint as ckpt
from ditkit.training.distill_linear import distill
from ditkit.training.trainer import model_metadata
from test_linear_distill import _teacher


def test_bench_attention_on_a_short_sequence(tmp_path):
    out = tmp_path / "att.json"
    run_cli("bench-attention", "--tokens", "256", "--repeats", "1", "--threads", "1", "--json", out)
    rows = json.loads(out.read_text())["rows"]
    assert {r["backend"].split(":")[0] for r in rows} >= {"sdpa", "fastattn", "sta", "svg", "topk", "linear"}
    assert all(r["tokens"] == 256 and r["ms"] > 0 and 0 <= r["rel_error"] < 2 for r in rows)


@pytest.mark.parametrize("argv, names", [
    (("--backends", "fora"), ("fora is not an attention backend", "caching", "ditkit bench --recipes fora", "topk")),
    (("--backends", "w8a8"), ("w8a8 is not an attention backend", "quantization")),
    (("--backends", "foo"), ("unknown attention backend 'foo'", "svg")),
    (("--backends", "svg:sparsity=2"), ("svg", "sparsity=2", "(0, 1]")),
    (("--tokens", "1024,x"), ("--tokens", "1024,x")),
    (("--repeats", "0"), ("--repeats", ">= 1")),
    (("--heads", "0"), ("--heads", ">= 1")),
    (("--json", "{tmp}/att"), ("--json", ".json")),
    (("--layout", "7x7x7"), ("7 square frames", "FxHxW")),
])
def test_bench_attention_bad_input(tmp_path, argv, names):
    fill = tmp_filler(tmp_path)
    err = cli_error("bench-attention", "--tokens", "1024", *fill(argv), names=fill(names))
    assert "tokens, layout" not in err                                  # refused before any measurement
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, names", [
    (("--steps", "0"), ("--steps", ">= 1")),
    (("--batch-size", "0"), ("--batch-size", ">= 1")),
    (("--lr", "nan"), ("--lr", "nan")),
    (("--lr", "0"), ("--lr", "> 0")),
    (("--minutes", "-1"), ("--minutes", "> 0")),
    (("--eval-samples", "1"), ("--eval-samples 1", "at least 2")),
    (("--out", "{tmp}/lit.pt"), ("--out", ".safetensors")),
    (("--teacher", "moving-mnist-vdt"), ("video DiT", "image DiTs")),
    (("--teacher", "no-such-model"), ("no-such-model",)),
])
def test_distill_linear_bad_input(tmp_path, argv, names):
    fill = tmp_filler(tmp_path)
    args = {"--teacher": "mnist-dit", "--out": str(tmp_path / "lit.safetensors")}
    args.update(dict(zip(fill(argv)[::2], fill(argv)[1::2])))
    cli_error("distill-linear", *[x for kv in args.items() for x in kv], names=fill(names))
    assert list(tmp_path.iterdir()) == []


def test_distill_prints_plain_progress_lines_off_terminals(tmp_path, capsys):
    cfg, teacher = _teacher()
    ckpt.save_weights(tmp_path / "teacher.safetensors", teacher.state_dict(), model_metadata(cfg, teacher, 10))
    distill(str(tmp_path / "teacher.safetensors"), tmp_path / "lit.safetensors", steps=4, batch_size=2, log_every=2)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("distill:")]
    assert [line.split(",")[0] for line in lines] == ["distill: step 2/4", "distill: step 4/4"]
    assert "loss" in lines[0] and "ETA" in lines[0]


@pytest.mark.parametrize("command, argv, names", [
    ("calibrate", ("--method", "teacache", "--num-prompts", "0", "--out", "{tmp}/c.json"), ("--num-prompts", ">= 1")),
    ("calibrate", ("--method", "teacache", "--out", "{tmp}/c"), ("--out", ".json")),
    ("calibrate", ("--method", "fora", "--out", "{tmp}/c.json"), ("--method", "teacache", "magcache")),
    ("quantize", ("--recipe", "w8a8", "--out", "{tmp}/q"), ("--out", ".safetensors")),
    ("quantize", ("--recipe", "w8a8", "--calibration-samples", "0", "--out", "{tmp}/q.safetensors"),
     ("--calibration-samples", ">= 1")),
    ("quantize", ("--recipe", "w8a8", "--threads", "-1", "--out", "{tmp}/q.safetensors"), ("--threads", ">= 0")),
])
def test_calibrate_and_quantize_bad_input(tmp_path, command, argv, names):
    fill = tmp_filler(tmp_path)
    cli_error(command, *fill(argv), names=fill(names))
    assert list(tmp_path.iterdir()) == []


def test_short_sequences_capture_activations_of_both_bundled_models(tmp_path):
    for model, layout in (("mnist-dit", "16"), ("moving-mnist-vdt", "4x4x16")):
        out = tmp_path / f"{model}.json"
        run_cli("bench-attention", "--tokens", "256", "--layout", layout, "--repeats", "1", "--threads", "1",
                "--heads", "2", "--head-dim", "16", "--backends", "svg,sta", "--activations", model, "--json", out)
        rows = json.loads(out.read_text())["rows"]
        assert [r["backend"] for r in rows] == ["sdpa", "svg", "sta"] and model in rows[1]["activations"]
        assert 0 < rows[1]["density"] < 1 and rows[1]["rel_error"] > 0         # sparse, not one dense block


@pytest.mark.parametrize("argv, names", [
    (("--backends", "svg+sta"), ("svg+sta", "one attention backend per comma-separated entry", "--e2e-recipes")),
    (("--layout", "0"), ("--layout '0'", "FxHxW")),
    (("--layout", "abc"), ("--layout 'abc'", "FxHxW")),
    (("--activations", "{tmp}/none.safetensors"), ("none.safetensors",)),
    (("--e2e", "--e2e-recipes", "foo"), ("--e2e-recipes", "foo")),
    (("--e2e", "--e2e-canvas", "31"), ("--e2e-canvas 31", "patch size")),
])
def test_bench_attention_checks_everything_before_measuring(tmp_path, argv, names):
    fill = tmp_filler(tmp_path)
    err = cli_error("bench-attention", "--tokens", "1024", *fill(argv), names=fill(names))
    assert "tokens, layout" not in err
    assert list(tmp_path.iterdir()) == []


def test_distill_linear_refuses_what_would_fail_or_destroy_the_teacher(tmp_path):
    cfg, teacher = _teacher()
    path = tmp_path / "teacher.safetensors"
    ckpt.save_weights(path, teacher.state_dict(), model_metadata(cfg, teacher, 10))
    before = path.read_bytes()
    cli_error("distill-linear", "--teacher", path, "--out", path, names=(f"--out {path}", "teacher", "-linear"))
    assert path.read_bytes() == before
    cli_error("distill-linear", "--teacher", path, "--out", tmp_path / "s.safetensors", "--conv", "4",
              names=("--conv 4", "odd", "--conv 5"))
    cli_error("distill-linear", "--teacher", path, "--out", tmp_path / "s.safetensors", "--heads", "5",
              names=("--heads 5", "hidden size 192", "1, 2, 3, 4, 6"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.safetensors"]


def test_quantize_checks_the_recipe_and_output_before_loading(tmp_path, monkeypatch):
    import ditkit.cli.quantize as quantize_cli
    monkeypatch.setattr(quantize_cli, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    cli_error("quantize", "--recipe", "fora", "--out", tmp_path / "q.safetensors", names=("--recipe fora", "w8a8"))
    cli_error("quantize", "--recipe", "w8a8:smooth=7", "--out", tmp_path / "q.safetensors", names=("smooth",))
    src = tmp_path / "m.safetensors"
    cfg, model = _teacher()
    ckpt.save_weights(src, model.state_dict(), model_metadata(cfg, model, 1))
    cli_error("quantize", "--model", src, "--recipe", "w8", "--out", src, names=("model's own file", "-w8"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
