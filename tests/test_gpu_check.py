"""benchmarks/gpu_check.py: the dry run (every section on the CPU at toy sizes) end to end, its report and
table, the refusal without a GPU, the bounded batch search; on a GPU, the correctness rows at toy sizes."""

import contextlib
import io
import json
import statistics

import pytest
import torch
from gpu.correctness import correctness, gradient_error
from gpu.distillation import bounded_search
from gpu.scales import DRY_RUN, INFERENCE_MODELS, RECIPES
from helpers import load_script

from armhubert.resources import BUNDLED_CORPUS

script = load_script("gpu_check")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """(JSON report, printed table) of one `--dry-run`."""
    output = tmp_path_factory.mktemp("gpu_check") / "runs" / "gpu_check.json"
    printed, logged = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(logged):
        status = script.run_main(script.PROG, script.main, ["--dry-run", "--output", str(output)])
    assert status == 0, logged.getvalue()[-2000:]
    assert [p.name for p in output.parent.iterdir()] == ["gpu_check.json"]  # no temporary file left
    table = printed.getvalue()
    assert table.rstrip().endswith(f"wrote {output}")
    return json.loads(output.read_text()), table


def rows(report, section, **where):
    return [r for r in report[section] if all(r.get(k) == v for k, v in where.items())]


def test_dry_run_reports_every_section(dry_run):
    report, _ = dry_run
    assert set(report) >= {
        "environment", "correctness", "inference", "distillation", "profile", "features", "summary", "seconds"
    }  # fmt: skip
    env = report["environment"]
    assert env["scale"] == "dry-run" and env["torch"] == torch.__version__ and env["device"].startswith("CPU")
    for section in ("correctness", "inference", "distillation", "profile"):
        assert report[section], section
        assert all(isinstance(r["case"], str) and r["section"] == section for r in report[section])


def test_dry_run_correctness_rows(dry_run):
    """Every correctness row passes in the dry run; reentrant checkpointing is refused."""
    report, _ = dry_run
    cases = {r["case"]: r for r in report["correctness"]}
    for attention in ("sdpa", "flex_attention", "eager"):
        for case in (f"{attention} fp32 weights padded", f"{attention} bf16 autocast padded"):
            assert cases[case]["passed"] and cases[case]["error"] <= cases[case]["tolerance"], cases[case]
        assert cases[f"{attention} fp32 weights multiples 2/8"]["passed"]
    assert cases["sdpa bf16 weights padded"]["passed"]
    assert cases["gradients fused vs explicit fp32"]["error"] < 1e-4
    assert cases["gradients fused vs explicit bf16 autocast"]["passed"]
    for path in ("explicit", "fused", "probabilities"):
        assert cases[f"checkpointing non-reentrant {path}"]["passed"]
        refused = cases[f"checkpointing reentrant {path}"]  # refused in one line
        assert refused["passed"] and "use_reentrant=False" in refused["refused"], refused
    assert cases["cpu vs cpu fp32"]["error"] == 0.0
    failed = [case for case, r in cases.items() if not r["passed"]]
    assert report["summary"]["correctness_failed"] == failed == []
    assert report["summary"]["correctness_passed"] is (not failed)


def test_dry_run_inference_rows(dry_run):
    report, _ = dry_run
    measured = rows(report, "inference", passed=True)
    assert {r["model"] for r in measured} == set(INFERENCE_MODELS)
    assert {r["precision"] for r in measured} == set(DRY_RUN.dtypes)
    assert rows(report, "inference", attention="flex_attention", passed=True)
    assert rows(report, "inference", compiled=True, passed=True)
    for r in measured:
        assert r["latency_ms"] > 0
        assert r["audio_seconds_per_second"] == pytest.approx(
            r["batch"] * DRY_RUN.inference_seconds / (r["latency_ms"] / 1000)
        )

    # The summary's ratio, recomputed by hand: bf16, SDPA, not compiled, each model at its largest batch.
    def largest_batch(model):
        found = rows(report, "inference", model=model, precision="bf16", attention="sdpa", compiled=False, passed=True)
        return max(found, key=lambda r: r["batch"])["audio_seconds_per_second"]

    ratio = report["summary"]["armhubert_over_hubert_base_throughput_bf16"]
    assert ratio == pytest.approx(largest_batch("armhubert-960h") / largest_batch("hubert-base")) and ratio > 0


def test_dry_run_distillation_rows(dry_run):
    report, _ = dry_run
    steps = [r for r in report["distillation"] if r.get("recipe")]
    assert {r["recipe"] for r in steps} == set(RECIPES)
    for r in steps:
        assert r["passed"], r
        assert r["batch"] == DRY_RUN.distill_batch
        assert r["audio_hours_per_gpu_hour"] == pytest.approx(r["audio_seconds"] / (r["step_ms"] / 1000))
        assert 0 < r["teacher_share"] < 1.5  # teacher timed alone: noise can push it a little past the step
        assert r["tflops"] > 0 and r["mfu"] is None  # no peak FLOP/s known for a CPU
        assert r["largest_batch"] == DRY_RUN.probe_limit and r["largest_batch_bounded"]
    ddp = [r for r in report["distillation"] if r["case"].startswith("ddp")]
    assert len(ddp) == 1 and ddp[0]["passed"] and ddp[0]["max_weight_difference"] == 0.0
    assert report["summary"]["armhubert_960h_bf16_audio_hours_per_gpu_hour"] == steps[0]["audio_hours_per_gpu_hour"]


def test_dry_run_features_rows(dry_run):
    """The tool and the naive loop each encode the whole dev-clean split (every round timed), and the summary's
    ratio is the ratio of their medians, recomputed here."""
    report, _ = dry_run
    tool, naive, ratio = report["features"]
    files = len(list((BUNDLED_CORPUS / "dev-clean").rglob("*.flac")))
    assert f"({files} files," in tool["case"] and tool["case"].split(" (")[0].endswith("tool")
    for measured in (tool, naive):
        assert measured["passed"] and len(measured["rounds"]) == DRY_RUN.repeats
        assert measured["audio_seconds_per_second"] == statistics.median(measured["rounds"]) > 0
    expected = tool["audio_seconds_per_second"] / naive["audio_seconds_per_second"]
    assert ratio["target"] == 2.0 and ratio["ratio"] == pytest.approx(expected)
    assert ratio["passed"] is (expected >= 2.0)
    assert report["summary"]["features_tool_over_naive"] == ratio["ratio"]


def test_dry_run_profile_and_table(dry_run):
    report, table = dry_run
    shares = [r["share"] for r in report["profile"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    assert all(r["ms_per_step"] >= 0 for r in report["profile"])
    lines = table.splitlines()
    assert lines[0].startswith("GPU check (dry-run): CPU")
    assert any(line.startswith("summary: correctness") for line in lines)
    for section in ("correctness", "inference", "distillation", "profile", "features"):
        assert sum(line.startswith(section) for line in lines) == len(report[section])
    assert any("checkpointing reentrant fused" in line for line in lines)


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusal without a GPU: this machine has one")
def test_refuses_without_gpu(tmp_path, capsys):
    output = tmp_path / "gpu_check.json"
    assert script.run_main(script.PROG, script.main, ["--output", str(output)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = captured.err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("gpu_check.py: error: no CUDA GPU") and "--dry-run" in line
    assert not output.exists()


@pytest.mark.parametrize(
    ("threshold", "start", "limit", "largest"),
    [(37, 18, 256, 36), (300, 18, 256, 256), (10, 18, 256, 10), (0, 18, 256, 0), (5, 1, 4, 4), (200, 18, 256, 200)],
)
def test_bounded_search(threshold, start, limit, largest):
    """Doubling then bisection to within ~6 %, never past the limit, probing only a few sizes."""
    probed = []

    def fits(size):
        probed.append(size)
        return size <= threshold

    found = bounded_search(fits, start, limit)
    assert found <= min(threshold, limit) and found >= min(threshold, limit) * 15 / 16
    assert found == largest
    assert max(probed) <= limit and len(probed) <= 12


def test_gradient_error_ignores_noise_of_exactly_zero_gradients():
    reference = {"weight": torch.ones(10), "key_bias": torch.full((4,), 1e-12)}
    noisy = {"weight": torch.ones(10), "key_bias": torch.full((4,), -1e-12)}
    assert gradient_error(noisy, reference) < 1e-8
    assert gradient_error({"weight": torch.ones(10)}, reference) == float("inf")
    assert gradient_error({**noisy, "weight": torch.ones(10) * 1.01}, reference) == pytest.approx(0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_correctness_on_gpu_at_toy_sizes():
    """On a GPU: fp32 paths agree with the float64 reference and with the CPU."""
    device = torch.device("cuda")
    report = correctness(DRY_RUN, device)
    cases = {r["case"]: r for r in report}
    for attention in ("sdpa", "flex_attention", "eager"):
        assert cases[f"{attention} fp32 weights padded"]["passed"], cases[f"{attention} fp32 weights padded"]
    assert cases["cpu vs cuda fp32"]["passed"]
