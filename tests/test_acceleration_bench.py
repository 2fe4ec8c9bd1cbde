"""Calibration round trip, the bench harness and its command line, diffusers peers."""
import json

import numpy as np
import pytest
import torch
from acceleration_util import tiny_dit, tiny_pipe

from ditkit.acceleration.cache.calibration import Recorder, fit_teacache, load_calibration, save_calibration
from ditkit.acceleration.recipes import Recipe
from ditkit.bench.harness import ditkit_entry, run_bench, split_recipes, standard_suite
from ditkit.bench.tasks import ImageTask, calibrate_on_task
from ditkit.cli import main
from ditkit.core import checkpoint as ckpt
from ditkit.core.configs import TrainConfig
from ditkit.training.trainer import model_metadata

SAMPLING = dict(num_sampling_steps=6, sampler="ddim", cfg_scale=4.0)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    model = tiny_dit()
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    ckpt.save_weights(path, model.state_dict(), model_metadata(TrainConfig(), model, 0))
    return path


def test_teacache_fit_recovers_a_known_polynomial():
    rec = Recorder()
    x = np.linspace(0.01, 0.5, 200)
    truth = [3.0, -2.0, 0.5, 1.5, 0.01]
    rec.pairs = list(zip(x, np.polyval(truth, x)))
    fit = fit_teacache(rec)
    np.testing.assert_allclose(fit["coefficients"], truth, rtol=1e-6, atol=1e-8)
    assert fit["fit"]["r2"] == pytest.approx(1.0)


def test_calibration_round_trip(tmp_path):
    pipe = tiny_pipe()
    tea = calibrate_on_task(pipe, "teacache", 3, seed=5, **SAMPLING)
    path = save_calibration(tea, tmp_path / "tea.json")
    assert load_calibration(path, "teacache")["coefficients"] == tea["coefficients"]
    assert tea["fit"]["pairs"] == 3 * 2 * (SAMPLING["num_sampling_steps"] - 1)       # samples x branches x steps-1
    from_file = pipe.set_recipe(f"teacache:coefficients={path},threshold=0.2")([1, 2], **SAMPLING)
    inline = pipe.set_recipe({"teacache": {"coefficients": tea["coefficients"], "threshold": 0.2}})([1, 2], **SAMPLING)
    pipe.set_recipe(None)
    assert torch.equal(from_file, inline)
    # one calibration sample: the magnitude curve reproduces its measured step ratios exactly
    mag = calibrate_on_task(pipe, "magcache", 1, seed=5, **SAMPLING)
    assert set(mag["curves"]) == {"cond", "uncond"} and mag["fit"]["ratio_mae"] < 1e-5
    path = save_calibration(mag, tmp_path / "mag.json")
    assert Recipe(f"magcache:ratios={path}").methods[0].curves.keys() == {"cond", "uncond"}
    with pytest.raises(ValueError, match="not a teacache calibration"):
        Recipe(f"teacache:coefficients={path}")


def test_calibrate_command(model_file, tmp_path, capsys):
    out = tmp_path / "mag.json"
    main(["calibrate", "--model", str(model_file), "--method", "magcache", "--num-prompts", "2",
          "--num-sampling-steps", "5", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "step ratios" in printed and f"magcache:ratios={out}" in printed
    assert load_calibration(out, "magcache")["sampling"]["num_sampling_steps"] == 5


def test_split_recipes():
    assert split_recipes("none,fora:interval=3,magcache:threshold=0.2,max_skips=4,teacache+w8a8") == [
        "none", "fora:interval=3", "magcache:threshold=0.2,max_skips=4", "teacache+w8a8"]


def test_standard_suite_is_defined_by_the_bench():
    assert standard_suite() == [
        "none", "fora:interval=1", "fora", "fora:interval=6", "firstblockcache", "firstblockcache:threshold=0.2",
        "teacache", "teacache:threshold=0.06", "magcache", "magcache:threshold=0.3,max_skips=6,retention=0.1",
        "taylorseer", "taylorseer:interval=6,order=1", "toca", "toca:interval=5", "delta_dit",
        "delta_dit:interval=5,span=0.75", "svg", "sta", "topk", "fastattn", "linear:dropin=true", "w8a8", "w8a8:act=tensor", "w8",
        "w4", "bf16"]
    assert standard_suite(("attention",)) == ["none", "svg", "sta", "topk", "fastattn", "linear:dropin=true"]


def test_run_bench_rows():
    pipe = tiny_pipe()
    entries = [ditkit_entry(pipe, s, s) for s in ("none", "fora:interval=1", "fora:interval=2")]
    task = ImageTask(3, 0, SAMPLING, pipe.num_classes)
    rows = run_bench(entries, task, repeats=2, log=lambda m: None)
    keys = {"recipe", "impl", "tokens", "speedup", "compute_ratio", "psnr", "ssim", "class_accuracy",
            "frechet_distance", "identical", "seconds"}
    assert all(keys <= set(r) for r in rows)
    none, never, half = rows
    assert none["psnr"] == never["psnr"] == 100 and never["compute_ratio"] == 1.0      # identical images
    assert never["identical"] and not half["identical"] and all(r["tokens"] == 16 for r in rows)   # 4x4 patches
    assert half["compute_ratio"] == pytest.approx(6 / 4) and 0 < half["psnr"] < 100   # full steps 0, 1, 3, 5
    assert half["flops"] < none["flops"] and all(len(r["seconds_all"]) == 2 for r in rows)
    assert torch.equal(task(pipe, 2), pipe([0, 1], seed=0, **SAMPLING))                 # labels cycle from 0


def test_frechet_distance_needs_more_samples_than_feature_dimensions(monkeypatch):
    import ditkit.bench.tasks as tasks
    monkeypatch.setattr(tasks, "classifier_metrics", lambda images, labels: {"class_accuracy": 0.5,
                                                                                "frechet_distance": 7.0})
    images = torch.rand(129, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    task = lambda n: ImageTask(n, 0, {}, 10, mnist=True)
    few, enough = task(128).quality(images[:128], images[:128]), task(129).quality(images, images)
    assert few["frechet_distance"] is None and few["class_accuracy"] == 0.5                # 128-d features
    assert enough["frechet_distance"] == 7.0 and enough["psnr"] == 100


def test_bench_command_with_diffusers_peers(model_file, tmp_path, capsys):
    pytest.importorskip("diffusers")
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    main(["bench", "--model", str(model_file), "--recipes", "fora:interval=2,teacache:threshold=0.3",
          "--peers", "diffusers", "--num-samples", "2", "--num-sampling-steps", "5", "--repeats", "1",
          "--calibration-prompts", "2", "--json", str(js), "--plot", str(png)])
    assert "| `fora:interval=2` | ditkit |" in capsys.readouterr().out
    rows = json.loads(js.read_text())["rows"]
    assert [r["recipe"] for r in rows[:3]] == ["none", "fora:interval=2", "teacache:threshold=0.3"]
    peers = {r["recipe"]: r for r in rows if r["impl"] == "diffusers"}
    assert {"none", "FirstBlockCache", "TaylorSeer", "MagCache", "PyramidAttentionBroadcast"} <= set(peers)
    # diffusers' default TaylorSeer hooks nothing on DiT: full compute, same function as ditkit's model
    assert peers["TaylorSeer"]["compute_ratio"] == 1.0 and peers["TaylorSeer"]["psnr"] > 60
    assert png.stat().st_size > 1000


def test_bars_are_checked_from_the_rows():
    from ditkit.bench.report import bars
    row = lambda recipe, impl, speedup, psnr, acc, cpu=None: dict(
        recipe=recipe, impl=impl, speedup=speedup, psnr=psnr, class_accuracy=acc, cpu_speedup=cpu or speedup)
    rows = [row("none", "ditkit", 1.0, 100, 0.95), row("fora:interval=1", "ditkit", 0.97, 100, 0.95),
            row("a", "ditkit", 4.2, 31.0, 0.945), row("b", "ditkit", 5.0, 35.0, 0.90),
            row("X", "diffusers", 3.0, 33.0, 0.95)]
    one, two, three = bars(rows)
    assert one.startswith("**met**") and "`a` 4.20x" in one                 # b misses the accuracy bar
    assert two.startswith("**met**") and "`b` 5.00x" in two                 # b: >= 33 dB and faster than X
    assert three.startswith("**met**") and "+3.1%" in three
    rows[3]["psnr"] = 32.0
    assert bars(rows)[1].startswith("**not met**")                            # no ditkit recipe reaches 33 dB
    rows[1]["speedup"] = 0.9
    assert bars(rows)[2].startswith("**not met**")


def test_markdown_report_replaces_only_its_section(tmp_path):
    from ditkit.bench.report import MARKERS, VIDEO_MARKERS, replace_generated_section
    path = tmp_path / "BENCHMARKS.md"
    replace_generated_section(path, "run one", "# Title")
    assert path.read_text().startswith("# Title") and "run one" in path.read_text()
    path.write_text(path.read_text() + "\n## Hand-written section\nkeep me\n")
    replace_generated_section(path, "video one", markers=VIDEO_MARKERS)
    replace_generated_section(path, "run two")
    replace_generated_section(path, "video two", markers=VIDEO_MARKERS)
    text = path.read_text()
    assert "run one" not in text and "run two" in text and "keep me" in text and text.startswith("# Title")
    assert "video one" not in text and "video two" in text
    assert all(text.count(m) == 1 for m in MARKERS + VIDEO_MARKERS)


def test_bench_through_the_diffusers_adapter_beside_cache_dit(model_file, tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("cache_dit")
    js, md = tmp_path / "b.json", tmp_path / "B.md"
    main(["bench", "--model", str(model_file), "--recipes", "fora:interval=2", "--through-diffusers",
          "--peers", "cache-dit", "--num-samples", "2", "--num-sampling-steps", "5", "--repeats", "1",
          "--json", str(js), "--markdown", str(md)])
    rows = json.loads(js.read_text())["rows"]
    assert {r["subject"] for r in rows} == {str(model_file)}
    by = {(r["impl"], r["recipe"]): r for r in rows}
    assert {("ditkit-native", "none"), ("ditkit-native", "fora:interval=2"), ("ditkit", "none"),
            ("ditkit", "fora:interval=2")} <= set(by)
    assert any(impl == "cache-dit" for impl, _ in by)
    # the adapter on the converted model reproduces the native recipe (bitwise: PSNR capped at 100 dB)
    assert by["ditkit", "fora:interval=2"]["psnr_vs_native"] >= 100
    assert by["ditkit", "fora:interval=2"]["psnr"] == by["ditkit-native", "fora:interval=2"]["psnr"]
    text = md.read_text()
    assert "side by side with cache-dit" in text and "through the diffusers adapter give the images" in text
