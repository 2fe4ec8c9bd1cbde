"""``ditkit tune``: the bisection along each method's knob finds its most aggressive setting within the budget, stacks
and timing pick a winner that meets it on the calibration samples, validation runs on disjoint seeds, the YAML is a
recipe ``--recipe`` takes, and the search is reproducible; on the bundled image DiT with few steps and samples."""
import json

import pytest
import yaml

from ditkit.acceleration.recipes import REGISTRY, Recipe
from ditkit.bench.tune import Budget

from cli_util import cli_error, run_cli

FAST = ["--num-sampling-steps", "6", "--probe-samples", "2", "--calibration-samples", "3", "--validation-samples",
        "2", "--time-samples", "1", "--repeats", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    run_cli("tune", "--model", "mnist-dit", "--min-psnr", "28", "--methods", "fora,w8a8,topk", *FAST,
            "--out", out / "recipe.yaml", "--json", out / "tune.json", "--plot", out / "front.png",
            "--compare", "fora:interval=2,bf16", "--markdown", out / "BENCH.md")
    return out, json.loads((out / "tune.json").read_text())


def test_each_knob_is_bisected_to_its_most_aggressive_setting_within_the_budget(tuned):
    _, report = tuned
    fora = {int(r["recipe"].split("=")[1]): r for r in report["candidates"] if r["recipe"].startswith("fora:")
            and "+" not in r["recipe"]}
    grid = REGISTRY["fora"].knob[1]
    assert len(fora) <= 4 < len(grid)                       # log2(8) + 1 probes, not all 8
    meeting = [v for v, r in fora.items() if r["probe_misses"] is None]
    missing = [v for v, r in fora.items() if r["probe_misses"] is not None]
    assert meeting and all(v < min(missing, default=99) for v in meeting)
    assert all(r["psnr"] >= 28.5 for v, r in fora.items() if v in meeting)          # min_psnr + 0.5 dB margin
    assert "topk" in report["skipped"] and "min_tokens" in report["skipped"]["topk"]   # 64 tokens: cannot apply


def test_winner_meets_the_budget_and_its_yaml_is_a_recipe(tuned):
    out, report = tuned
    winner = report["winner"]
    assert report["calibration"]["psnr"] >= 28 and report["validation"]["speedup"] > 0
    timed = [r for r in report["candidates"] if "speedup" in r]
    assert winner == max(timed, key=lambda r: r["speedup"])["recipe"]
    assert all(r["calibration_misses"] is None for r in timed)
    assert str(Recipe(str(out / "recipe.yaml"))) == str(Recipe(winner))
    assert yaml.safe_load((out / "recipe.yaml").read_text())          # comments + a list of methods
    assert report["validation_rows"][0]["recipe"] == "none" and report["settings"]["validation_seed"] == 0
    assert (out / "front.png").stat().st_size > 0
    assert {"fora:interval=2", "bf16"} <= {r["recipe"] for r in report["validation_rows"]}
    text = (out / "BENCH.md").read_text()
    assert "ditkit tune" in text and "best hand-picked recipe" in text and f"`{winner}`" in text


def test_the_search_is_reproducible(tuned, tmp_path):
    _, first = tuned
    run_cli("tune", "--model", "mnist-dit", "--min-psnr", "28", "--methods", "fora,w8a8,topk", *FAST,
            "--out", tmp_path / "r.yaml", "--json", tmp_path / "t.json")
    again = json.loads((tmp_path / "t.json").read_text())
    key = lambda report: [(r["recipe"], round(r["psnr"], 6)) for r in report["candidates"]]
    assert key(again) == key(first)


def test_budget_bounds_and_bad_flags(tmp_path):
    b = Budget(30, min_ssim=0.9, max_accuracy_drop=1)
    ref = {"psnr": 100, "ssim": 1, "class_accuracy": 0.98}
    assert b.misses({"psnr": 31, "ssim": 0.95, "class_accuracy": 0.975}, ref) is None
    assert "PSNR" in b.misses({"psnr": 29, "ssim": 0.95, "class_accuracy": 0.98}, ref)
    assert "SSIM" in b.misses({"psnr": 31, "ssim": 0.8, "class_accuracy": 0.98}, ref)
    assert "points" in b.misses({"psnr": 31, "ssim": 0.95, "class_accuracy": 0.95}, ref)
    cli_error("tune", "--seed", "1000", "--out", tmp_path / "r.yaml", names=("overlap", "--calibration-seed"))
    cli_error("tune", "--methods", "nosuch", names=("nosuch", "fora"))
    cli_error("tune", "--out", tmp_path / "r.txt", names=("--out", ".yaml"))


def test_tune_a_diffusers_dit_folder(tmp_path):
    """--model a local diffusers DiT folder: tuned through ditkit's adapter, the winner meets the budget on the
    validation seeds and its YAML is a recipe ``generate --recipe`` applies to that folder."""
    import torch
    from diffusers import DiTTransformer2DModel

    from ditkit.bench.tiny_diffusers import _nonzero
    torch.manual_seed(0)
    folder = tmp_path / "dit"
    _nonzero(DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                   num_layers=2, sample_size=16, patch_size=2, num_embeds_ada_norm=10), 0
             ).save_pretrained(folder)
    run_cli("tune", "--model", folder, "--min-psnr", "25", "--methods", "fora,teacache", *FAST,
            "--out", tmp_path / "recipe.yaml", "--json", tmp_path / "tune.json")
    report = json.loads((tmp_path / "tune.json").read_text())
    assert report["winner"] != "none" and report["validation"]["psnr"] >= 25
    assert str(Recipe(str(tmp_path / "recipe.yaml"))) == str(Recipe(report["winner"]))
    run_cli("generate", "--model", folder, "--recipe", tmp_path / "recipe.yaml", "--num-samples", "2",
            "--num-sampling-steps", "6", "--npz", tmp_path / "s.npz", "--no-progress")
    assert (tmp_path / "s.npz").is_file()
