"""What `benchmarks/benchmark.py` reports (MACs, memory, ratios), and the model's fast paths it measures."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, load_script, random_model, tiny_config, waveform
from instruments import profiling
from transformers import HubertConfig, HubertModel

from armhubert.cli import UserError
from armhubert.deploy import timing
from configuration_armhubert import PRESETS
from modeling_armhubert import ARMHubertModel

benchmark = load_script("benchmark")


def frames_after_cnn(config, num_samples):
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        num_samples = (num_samples - kernel) // stride + 1
    return num_samples


def cnn_macs(config, num_samples, in_dim=1):
    macs = 0
    for dim, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        num_samples = (num_samples - kernel) // stride + 1
        macs += num_samples * dim * in_dim * kernel
        in_dim = dim
    return macs


def positional_conv_macs(config, frames):
    # Padding K // 2 on both sides: an even kernel gives T + 1 outputs (the last is dropped after).
    outputs = frames + 1 - config.num_conv_pos_embeddings % 2
    width = config.hidden_size
    return outputs * width * (width // config.num_conv_pos_embedding_groups) * config.num_conv_pos_embeddings


def armhubert_hand_count(config, num_samples, all_outputs):
    """MACs of ARMHubertModel, layer by layer, from the architecture alone."""
    frames, width, ffn = frames_after_cnn(config, num_samples), config.hidden_size, config.intermediate_size
    macs = cnn_macs(config, num_samples) + positional_conv_macs(config, frames)
    if config.conv_dim[-1] != width:
        macs += frames * config.conv_dim[-1] * width
    for reuses in config.layer_reuses_attention_map:
        projections = 2 if reuses else 4  # v, out (+ q, k)
        attention = 1 if reuses else 2  # weights @ V (+ Q K^T): T x T x D each
        macs += projections * frames * width * width + attention * frames * frames * width + 2 * frames * width * ffn
    if config.projection_head_size:
        heads = config.num_hidden_layers if all_outputs else 1
        macs += heads * frames * width * config.projection_head_size
    return macs


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # reuse in layers 1 and 3, projection heads
        dict(layer_reuses_attention_map=[False] * 4, projection_head_size=None, use_mask_embedding=False),  # SDPA
        dict(conv_dim=[32, 32, 32, 32, 32, 32, 40, 40, 40], feat_extract_norm="layer", conv_bias=True),  # projection
    ],
    ids=["arm", "star-sdpa", "feature-projection"],
)
@pytest.mark.parametrize("all_outputs", [True, False], ids=["all-outputs", "last-output"])
def test_armhubert_mac_count_matches_a_hand_count(overrides, all_outputs):
    config = tiny_config(**overrides)
    model = random_model(config)
    assert benchmark.count_macs(model, 6480, all_outputs) == armhubert_hand_count(config, 6480, all_outputs)


def test_hubert_mac_count_includes_the_attention_products_sdpa_hides():
    config = HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    model = HubertModel(config).eval()
    assert model.config._attn_implementation == "sdpa"
    num_samples, width = 3205, 32
    first_conv_frames = (num_samples - 10) // 5 + 1
    frames = (first_conv_frames - 3) // 2 + 1
    expected = first_conv_frames * 16 * 10 + frames * 16 * 16 * 3  # the two convolutions
    expected += frames * 16 * width  # feature projection
    expected += (frames + 1) * width * (width // 4) * 16  # positional conv
    expected += 2 * (4 * frames * width * width + 2 * frames * frames * width + 2 * frames * width * 64)
    assert benchmark.count_macs(model, num_samples) == expected
    assert model.config._attn_implementation == "sdpa"  # restored after counting


def test_counting_on_the_meta_device_equals_counting_real_tensors():
    config = tiny_config()
    with torch.device("meta"):
        shapes_only = ARMHubertModel(config).eval()
    assert benchmark.count_macs(shapes_only, 9000) == benchmark.count_macs(random_model(config), 9000)


@pytest.mark.parametrize("name", sorted(benchmark.PAPER_MACS_G))
def test_preset_macs_are_within_two_percent_of_the_papers(name):
    macs_10s = benchmark.count_macs(benchmark.meta_model(name), 160000)
    check = benchmark.paper_check(name, macs_10s)
    assert check["measured_g"] == pytest.approx(22.5 * macs_10s / 1e9)
    assert abs(check["error_percent"]) < 2.0


def test_paper_check_error_and_models_without_a_published_figure():
    check = benchmark.paper_check("armhubert-s-960h", 449.4e9 / 22.5 * 1.01)
    assert check["paper_g"] == 449.4 and check["error_percent"] == pytest.approx(1.0)
    assert benchmark.paper_check("armhubert-960h", 1e9)["error_percent"] is None


def fake_results(latencies, memories, parameters, macs):
    return {
        name: {
            "parameters": parameters[name],
            "width": 480,
            "reuses_maps": name == "armhubert-960h",
            "macs": {"2": macs[name], "10": 5 * macs[name]},
            "cases": [
                {"batch_size": batch, "seconds": 2.0, "latency_ms": latency, "peak_memory_mb": memory}
                for batch, latency, memory in zip((1, 8), latencies[name], memories[name])
            ],
        }
        for name in latencies
    }


def baseline_and_student():
    """HuBERT Base and ARMHuBERT-960h measured on two cases (batch 1 and 8, 2 s)."""
    return fake_results(
        latencies={"hubert-base": [100.0, 400.0], "armhubert-960h": [25.0, 200.0]},
        memories={"hubert-base": [500.0, 1000.0], "armhubert-960h": [150.0, 100.0]},
        parameters={"hubert-base": 1000, "armhubert-960h": 280},
        macs={"hubert-base": 200, "armhubert-960h": 60},
    )


def test_every_ratio_is_to_hubert_base_in_the_same_case():
    results = baseline_and_student()
    benchmark.add_ratios(results)
    student, baseline = results["armhubert-960h"], results["hubert-base"]
    assert student["parameters_ratio"] == pytest.approx(0.28)
    assert student["macs_ratio"] == {"2": pytest.approx(0.3), "10": pytest.approx(0.3)}
    assert [case["latency_ratio"] for case in student["cases"]] == [0.25, 0.5]
    assert [case["peak_memory_ratio"] for case in student["cases"]] == [0.3, 0.1]
    assert [case["latency_ratio"] for case in baseline["cases"]] == [1.0, 1.0]


def test_reuse_ratios_are_to_maskhubert_for_models_of_its_width():
    names = ["hubert-base", "armhubert-960h", "armhubert-s-960h", "maskhubert-960h"]
    results = fake_results(
        latencies=dict(zip(names, ([100.0, 400.0], [30.0, 120.0], [20.0, 90.0], [25.0, 100.0]))),
        memories=dict(zip(names, ([500.0, 1000.0], [150.0, 300.0], [120.0, 240.0], [150.0, 200.0]))),
        parameters=dict(zip(names, (1000, 280, 240, 280))),
        macs=dict(zip(names, (200, 60, 50, 62))),
    )
    results["armhubert-s-960h"].update(width=432, reuses_maps=True)
    benchmark.add_ratios(results)
    arm = results["armhubert-960h"]["cases"]
    assert [case["latency_vs_reference"] for case in arm] == [1.2, 1.2]
    assert [case["peak_memory_vs_reference"] for case in arm] == [1.0, 1.5]
    for name in ("hubert-base", "armhubert-s-960h", "maskhubert-960h"):  # no reuse, or another width
        assert all("latency_vs_reference" not in case for case in results[name]["cases"])


def test_live_tensor_bytes_counts_what_is_alive_at_the_worst_moment():
    resident = torch.zeros(100)  # 400 bytes, like weights: counted from the start
    with profiling.LiveTensorBytes([resident]) as tracker:
        first = torch.ones(1000)  # 4000
        second = torch.ones(2000)  # 8000: the peak holds both
        first.view(10, 100).add_(1)  # a view and an in-place result add nothing
        resident.view(4, 25).mul_(2)
        del first, second
        third = torch.ones(500)  # 2000
    assert tracker.peak == 400 + 4000 + 8000
    assert tracker.current == 400 + 2000
    del third


def test_instruments_measure_flex_attention_as_one_fused_call():
    """FlexAttention is a higher-order operator: the dispatch modes used to refuse it (`:flex` crashed on CPU)."""
    audio = waveform(16000 * 8, seed=4)  # 399 frames: above the whole-map hand-over, so the pair runs FlexAttention
    config = tiny_config(layer_reuses_attention_map=[False, True, False, False])
    models = {name: random_model(config) for name in ("sdpa", "flex")}
    models["flex"].config._attn_implementation = "flex_attention"
    with torch.inference_mode():
        expected, actual = (models[name](audio).last_hidden_state for name in ("sdpa", "flex"))
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)  # the flex path really ran
    peaks = {name: profiling.measure_peak_memory(model, audio, all_outputs=False) for name, model in models.items()}
    assert 0.5 < peaks["flex"] / peaks["sdpa"] < 2.0
    assert 0 <= profiling.measure_fixed_cost(models["flex"], audio, all_outputs=False) < 50
    assert profiling.count_macs(models["flex"], 16000) == profiling.count_macs(models["sdpa"], 16000)


def test_a_ratio_table_without_rows_is_left_out():
    """No MaskHuBERT among the models: no "reuse against MaskHuBERT" table with headers only."""
    results = baseline_and_student()
    benchmark.add_ratios(results)
    for name, entry in results.items():
        entry["label"] = name
    args = benchmark.BenchmarkArguments(batch_sizes=[1, 8], seconds=[2.0])

    def reuse(entry, case):
        return f"{case['latency_vs_reference']:.2f}" if "latency_vs_reference" in case else None

    assert benchmark.per_case_table(results, args, "reuse", reuse) == []
    latency = benchmark.per_case_table(results, args, "latency", lambda entry, case: f"{case['latency_ms']:.0f}")
    assert latency[1] == "latency" and latency[-1] == "| armhubert-960h | 25 | 200 |"


def test_peak_memory_does_not_grow_with_depth():
    """Attention maps are freed as soon as no later layer reuses them (they once stayed for every layer)."""
    peaks = []
    audio = waveform(16000 * 8, seed=1)  # 399 frames: 4 heads x 399 x 399 floats = 2.4 MB per map
    for layers in (4, 8):
        config = tiny_config(num_hidden_layers=layers, layer_reuses_attention_map=[False, True] * (layers // 2))
        model = random_model(config)
        weights = sum(t.untyped_storage().nbytes() for t in profiling.state_tensors(model))
        peaks.append(profiling.measure_peak_memory(model, audio, all_outputs=False) - weights)
    map_bytes = 4 * 399 * 399 * 4
    assert peaks[1] - peaks[0] < 0.2 * map_bytes


def test_inference_fast_paths_match_the_fixture(converted_tiny, reference_io):
    """In-place CNN activations and skipped heads (no autograd, no hidden states) change no number."""
    source = reference_io["input.single.source"]
    with torch.inference_mode():
        last_only = converted_tiny(source).last_hidden_state
        every_output = converted_tiny(source, output_hidden_states=True)
    torch.testing.assert_close(last_only, reference_io["single.x"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(every_output.extract_features, reference_io["single.features"], atol=1e-5, rtol=1e-5)
    assert torch.equal(last_only, every_output.last_hidden_state)


def test_compiles_as_one_graph_with_a_padded_batch():
    """`torch.compile(fullgraph=True)` captures the whole model: computing, reusing and SDPA layers."""
    model = random_model(tiny_config(layer_reuses_attention_map=[False, True, False, False]))
    audio = torch.cat([waveform(6480, seed=2), F.pad(waveform(4000, seed=3), (0, 2480))])
    attention_mask = torch.ones_like(audio, dtype=torch.long)
    attention_mask[1, 4000:] = 0
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        expected = model(audio, attention_mask=attention_mask, output_hidden_states=True)
        actual = compiled(audio, attention_mask=attention_mask, output_hidden_states=True)
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
    for got, want in zip(actual.hidden_states, expected.hidden_states):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(actual.frame_attention_mask, expected.frame_attention_mask)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "armhubert-xl"], "unknown model"),
        (["--dtype", "float16"], "needs --device cuda"),
        (["--dtype", "float64"], "--dtype: invalid choice: 'float64'"),
        (["--seconds", "0.01"], "--seconds must be a finite number >= 0.05, got 0.01"),
        (["--seconds", "30", "--batch_sizes", "8", "--max_audio_per_pass", "60"], "no case fits"),
        (["--repeats", "0"], "--repeats must be an integer >= 1, got 0"),
        (["--models", "armhubert-960h:fast"], "unknown variant"),
        (["--models", "hubert-base:flex"], "unknown variant"),
        (["--clock", "cycles"], "--clock: invalid choice: 'cycles'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys, tmp_path):
    assert benchmark.main(argv + ["--output_dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("benchmark: error: ") and message in error and len(error.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cuda_without_a_gpu_is_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert benchmark.main(["--device", "cuda", "--output_dir", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_a_small_run_writes_table_json_and_plot(capsys, tmp_path):
    argv = ["--models", "armhubert-960h", "maskhubert-960h", "--seconds", "0.5", "1", "--batch_sizes", "1", "2"]
    argv += ["--repeats", "2", "--threads", "1", "--max_audio_per_pass", "1", "--output_dir", str(tmp_path)]
    assert benchmark.main(argv + ["--machine", "test box", "--clock", "process"]) == 0
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert (tmp_path / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["benchmark.json", "benchmark.png"]
    models = report["models"]
    assert list(models) == ["hubert-base", "armhubert-960h", "maskhubert-960h"]  # the baseline is always measured
    cases = [(case["batch_size"], case["seconds"]) for case in models["hubert-base"]["cases"]]
    assert cases == [(1, 0.5), (1, 1.0), (2, 0.5)]  # 2 x 1 s is above --max_audio_per_pass
    student, reference = models["armhubert-960h"], models["maskhubert-960h"]
    assert student["parameters"] == 26_448_448
    assert student["parameters_ratio"] == pytest.approx(26_448_448 / models["hubert-base"]["parameters"])
    assert all(case["latency_ratio"] == 1.0 for case in models["hubert-base"]["cases"])
    for case, reference_case in zip(student["cases"], reference["cases"]):
        assert len(case["latency_ms_runs"]) == 2 and case["latency_ms"] > 0
        assert case["peak_memory_mb"] > student["parameters"] * 4 / 2**20  # weights are part of the peak
        assert case["latency_vs_reference"] == pytest.approx(case["latency_ms"] / reference_case["latency_ms"])
        memory_ratio = case["peak_memory_mb"] / reference_case["peak_memory_mb"]
        assert case["peak_memory_vs_reference"] == pytest.approx(memory_ratio)
    assert all("latency_vs_reference" not in case for case in reference["cases"])  # MaskHuBERT reuses no map
    # HF's HuBERT re-derives its weight-normed positional kernel per call; these models do not.
    assert models["hubert-base"]["fixed_cost_ms"]["ms"] > 0 and student["fixed_cost_ms"]["ms"] < 0.5
    assert report["machine"]["label"] == "test box" and report["machine"]["threads"] == 1
    table = capsys.readouterr().out
    assert "| ARMHuBERT-960h | 26.45 (0.28x)" in table and "Batch 1, 0.5 s" in table and "clock: process" in table
    assert "Attention-map reuse against MaskHuBERT" in table and "Fixed cost per call" in table
    assert Path(report["arguments"]["output_dir"]) == tmp_path


def test_results_go_outside_the_tracked_files_by_default():
    """A plain run must not overwrite the README's figures in scripts/results."""
    default = Path(benchmark.BenchmarkArguments().output_dir)
    assert default.parts[0] == "runs" and "/runs/" in (ROOT / ".gitignore").read_text().split()


def test_variants_build_the_configured_model():
    assert benchmark.build_model("armhubert-960h:probabilities").config.reuse_softmax == "probabilities"
    assert benchmark.build_model("ARMHuBERT-960h:flex").config._attn_implementation == "flex_attention"
    assert benchmark.model_label("armhubert-960h:probabilities") == "ARMHuBERT-960h (probabilities)"


def test_contenders_take_turns_and_each_round_starts_with_the_next():
    """`times_taking_turns`: warm-up calls first, then every round runs each contender once, round r starting
    at the r-th, so that no contender always runs first (on a cold cache) or right after the same one."""
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = timing.times_taking_turns(runs, repeats=4, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab") + list("abc")
    assert list(times) == list("abc") and all(len(values) == 4 and min(values) >= 0 for values in times.values())
    medians = timing.medians_taking_turns(runs, repeats=3, warmup=0)
    assert list(medians) == list("abc") and all(value >= 0 for value in medians.values())


def test_python_callers_get_the_argument_rules_too():
    """`check_arguments` runs the fields' checks and RULES for a dataclass built in Python, not parsed."""
    benchmark.check_arguments(benchmark.BenchmarkArguments(models=["ARMHuBERT-960h:Flex"], seconds=[2.0]))
    with pytest.raises(UserError, match=r"^unknown model\(s\) armhubert-xl, nope; choose from hubert-base, "):
        benchmark.check_arguments(benchmark.BenchmarkArguments(models=["armhubert-xl", "nope", "starhubert"]))
    cuda = benchmark.BenchmarkArguments(device="cuda", clock="process")
    with pytest.raises(UserError, match="^--clock process measures CPU time, not the GPU's; use --clock wall"):
        benchmark.check_arguments(cuda)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "armhubert-xl"], f"unknown model 'armhubert-xl': choose presets of {', '.join(PRESETS)}"),
        (["--cases", "1x10", "1xten"], "--cases '1xten': expected BATCHxSECONDS, e.g. 1x10 or 8x10"),
        (["--cases", "0x10"], "--cases '0x10': batch >= 1, 0.1-600 s, at most an hour of audio per call"),
        (["--cases", "8x600"], "--cases '8x600': batch >= 1, 0.1-600 s, at most an hour of audio per call"),
        (["--cases", "1xnan"], "--cases '1xnan': batch >= 1, 0.1-600 s, at most an hour of audio per call"),
    ],
)
def test_benchmark_runtimes_refuses_bad_arguments_before_any_model(argv, message, capsys, tmp_path):
    runtimes = load_script("benchmark_runtimes")
    assert runtimes.main([*argv, "--output_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"benchmark_runtimes.py: error: {message}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sections", "throughput,speed", "unit"], "unknown sections speed, unit; choose from throughput, "),
        (["--sections", "chunking,units"], "--sections units needs --units_model (a distilled student folder"),
        (["--sections", "kmeans", "--data_dir", "{tmp}"], "no .flac files for train-clean-100,dev-clean,test-clean"),
    ],
)
def test_benchmark_features_refuses_bad_arguments_in_one_line(argv, message, capsys, tmp_path):
    features = load_script("benchmark_features")
    assert features.main([item.format(tmp=tmp_path) for item in argv]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"benchmark_features.py: error: {message}") and len(error.splitlines()) == 1, error
