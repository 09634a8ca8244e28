"""armhubert.deploy: int8 / bf16 fidelity, padded ONNX batches, a speaker classifier after int8, refusals."""

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from helpers import load_script, memoize_onnx_export, random_model, tiny_config

from armhubert.cli import UserError
from armhubert.convert.folders import save_model_folder
from armhubert.resources import BUNDLED_CORPUS
from armhubert.speech.audio import read_audio
from configuration_armhubert import SAMPLING_RATE, ARMHubertConfig
from modeling_armhubert import ARMHubertModel

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
from armhubert import deploy  # noqa: E402  (needs onnxruntime)
from armhubert.deploy import cpu, quantize  # noqa: E402  (the modules whose private helpers are tested)
from armhubert.deploy import graph as onnx_graph  # noqa: E402

MIN_COSINE = 0.999  # every layer's mean cosine to fp32 (the bound)


def corpus(split, seconds=2.0):
    """(speaker, 16 kHz samples cut to `seconds`) of every utterance of a bundled split."""
    files = sorted((BUNDLED_CORPUS / split).rglob("*.flac"))
    return [(path.parent.parent.name, read_audio(path)[: int(seconds * SAMPLING_RATE)]) for path in files]


@pytest.fixture(scope="module")
def speech():
    return [samples for _, samples in corpus("dev-clean")[::3]]  # one utterance per speaker


@pytest.fixture(scope="module")
def fixture_model(converted_tiny):
    return converted_tiny.eval()


@pytest.fixture(scope="module")
def fixture_graph(fixture_model):
    """The fixture checkpoint's fp32 graph (exporting takes a while: once per module)."""
    return deploy.export_onnx(fixture_model)


def worst(layers):
    return min(layer.mean_cosine for layer in layers)


def test_int8_and_bf16_keep_every_layer_of_the_fixture_checkpoint(fixture_model, fixture_graph, speech):
    graph = fixture_graph
    results = deploy.fidelity_report(fixture_model, speech, {"int8": deploy.quantize_int8(graph)}, threads=1)
    names = [layer.name for layer in results["int8"]]
    layers = fixture_model.config.num_hidden_layers
    assert names == ["last"] + [f"hidden {i}" for i in range(layers + 1)] + [
        f"projected {i + 1}" for i in range(layers)
    ]
    for label in ("int8", "bf16 weights", "bf16 autocast"):
        assert worst(results[label]) >= MIN_COSINE, (label, results[label])
        assert worst(results[label]) < 1.0 - 1e-7, label  # it did change the numbers: the check is not vacuous
    # Quantising the CNN front-end is what costs: the reason it stays float by default.
    cnn = deploy.fidelity_report(fixture_model, speech[:1], {"cnn": deploy.quantize_int8(graph, ["cnn"])}, threads=1)
    assert worst(cnn["cnn"]) < worst(results["int8"])


@pytest.mark.parametrize("preset", ["armhubert-960h", "maskhubert-960h", "starhubert"])
def test_bf16_keeps_every_layer_of_the_full_size_presets(preset, speech):
    torch.manual_seed(0)
    model = ARMHubertModel(ARMHubertConfig.from_preset(preset)).eval()
    results = deploy.fidelity_report(model, [speech[0][:SAMPLING_RATE]], {}, threads=1)
    assert worst(results["bf16 weights"]) >= MIN_COSINE and worst(results["bf16 autocast"]) >= MIN_COSINE


def test_export_writes_masked_fills_as_arithmetic_and_pointwise_convolutions_as_conv(fixture_model, fixture_graph):
    """The graph rewrites: no `Where` over the full-size tensors (only the -inf bias, once per mask,
    from a constant zero) and every 1 x 1 CNN convolution one Conv without layout copies."""
    import onnx

    graph = onnx.load_from_string(fixture_graph).graph
    constants = onnx_graph._scalar_initializers(graph)
    fills = [
        node for node in graph.node if node.op_type == "Where" and constants.get(node.input[1]) in (0.0, -math.inf)
    ]
    assert fills and all(node.input[2] in constants for node in fills)  # where(mask, -inf, 0): the bias itself
    config = fixture_model.config
    kernels = config.conv_kernel[1:]  # the first layer is a matmul over frames
    assert 1 in kernels
    assert sum(node.op_type == "Conv" for node in graph.node) == len(kernels) + 1  # + the positional convolution
    cnn = [node.op_type for node in graph.node if quantize._part(node) == "cnn"]
    assert cnn.count("MatMul") == 1  # the waveform's frames; the 1 x 1 layers are Conv now


def layer_norm_model():
    config = tiny_config(
        feat_extract_norm="layer", conv_bias=True, layer_reuses_attention_map=[False, True, True, False]
    )
    return random_model(config, seed=11)


def test_padded_onnx_batch_gives_each_row_what_it_gives_alone():
    model = layer_norm_model()
    graph = deploy.export_onnx(model)
    lengths = [3 * SAMPLING_RATE, 7 * SAMPLING_RATE, 10 * SAMPLING_RATE]
    generator = torch.Generator().manual_seed(5)
    rows = [0.1 * torch.randn(length, generator=generator) for length in lengths]
    batch = torch.zeros(len(rows), max(lengths))
    mask = torch.zeros(batch.shape, dtype=torch.long)
    for index, row in enumerate(rows):
        batch[index, : len(row)], mask[index, : len(row)] = row, 1
    for precision in ("fp32", "int8"):
        session = deploy.onnx_session(deploy.convert_precision(graph, precision), threads=1)
        padded = deploy.run_onnx(session, batch.numpy(), mask.numpy())
        for index, row in enumerate(rows):
            alone = deploy.run_onnx(session, row[None].numpy())  # no mask: the graph's default
            frames = alone["hidden_states"].shape[2]
            row_outputs = {
                "last_hidden_state": padded["last_hidden_state"][index : index + 1, :frames],
                "hidden_states": padded["hidden_states"][:, index : index + 1, :frames],
                "projected_hidden_states": padded["projected_hidden_states"][:, index : index + 1, :frames],
            }
            if precision == "fp32":
                for name, value in row_outputs.items():
                    np.testing.assert_allclose(value, alone[name], atol=1e-4, rtol=1e-4, err_msg=f"row {index} {name}")
            else:  # activation scales are per tensor, i.e. per batch: close, not equal
                assert worst(deploy.layer_fidelity(alone, row_outputs)) >= MIN_COSINE, index


def nearest_centroid(features, labels):
    speakers = sorted(set(labels))
    centroids = np.stack([features[[label == s for label in labels]].mean(0) for s in speakers])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    return lambda x: [speakers[i] for i in (x / np.linalg.norm(x, axis=1, keepdims=True) @ centroids.T).argmax(1)]


def utterance_features(session, utterances):
    """Mean over frames of the layer average of the hidden states: one vector per utterance."""
    return np.stack([deploy.run_onnx(session, audio[None])["hidden_states"].mean((0, 2))[0] for _, audio in utterances])


def test_speaker_classifier_predicts_the_same_dev_speakers_after_int8(fixture_graph):
    """A speaker-id classifier on fp32 features (nearest centroid over the bundled train split) gives
    the same predictions on the dev split when the encoder runs in int8."""
    graph = fixture_graph
    fp32, int8 = (deploy.onnx_session(deploy.convert_precision(graph, p), threads=1) for p in ("fp32", "int8"))
    train, dev = corpus("train-clean-100"), corpus("dev-clean")
    classify = nearest_centroid(utterance_features(fp32, train), [speaker for speaker, _ in train])
    truth = [speaker for speaker, _ in dev]
    predicted = classify(utterance_features(fp32, dev))
    assert np.mean([p == t for p, t in zip(predicted, truth)]) >= 0.5  # it tells speakers apart (chance: 0.25)
    assert classify(utterance_features(int8, dev)) == predicted


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy") / "model"
    save_model_folder(random_model(tiny_config(num_hidden_layers=2, layer_reuses_attention_map=[False, True])), folder)
    return folder


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_export_writes_a_checked_int8_or_fp16_graph(tiny_folder, tmp_path, capsys, monkeypatch, precision):
    export_onnx = load_script("export_onnx")
    memoize_onnx_export(export_onnx, monkeypatch.setattr)  # one export of tiny_folder's model for all four runs
    output = tmp_path / f"model.{precision}.onnx"
    argv = [str(tiny_folder), "--output", str(output), "--precision", precision, "--latency-seconds", "1"]
    code = export_onnx.main([*argv, "--latency-runs", "1"])
    out = capsys.readouterr().out
    assert code == 0 and output.is_file()
    assert f"{precision} fidelity to PyTorch fp32 (batch 3 x 1.7 s, padded rows" in out and "below the bound" not in out
    # A bound no graph meets (--min_cosine > 1 is refused at parsing: a cosine never exceeds 1): status 1, nothing written.
    output.unlink()
    code = export_onnx.main([*argv, "--max_relative_error", "1e-12"])
    assert code == 1 and "parity check failed" in capsys.readouterr().err and not output.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--precision", "int3"], "--precision: invalid choice: 'int3' (choose from 'fp32', 'int8', 'fp16')"),
        (
            ["--precision", "int8", "--int8-parts", "everything"],
            "--int8_parts: invalid choice: 'everything' (choose from 'cnn'",
        ),
    ],
)
def test_bad_precision_is_one_line_and_writes_nothing(tiny_folder, tmp_path, capsys, extra, message):
    export_onnx = load_script("export_onnx")
    code = export_onnx.main([str(tiny_folder), "--output", str(tmp_path / "m.onnx"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "m.onnx").exists()


def test_int8_weights_fit_seven_bits_so_cpus_without_vnni_do_not_overflow(fixture_graph):
    """Without VNNI, ONNX Runtime sums pairs of u8 x s8 products in int16: full-range weights overflow it
    (the fixture's worst layer fell to cosine 0.987 on such a CPU). The default file keeps |w| <= 64."""
    import onnx
    from onnx import numpy_helper

    def weights(graph):
        proto = onnx.load_from_string(graph)
        int8 = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
        assert int8, "no int8 weights"
        return max(int(abs(w.astype("int32")).max()) for w in int8)

    assert weights(deploy.quantize_int8(fixture_graph)) <= 64
    assert weights(deploy.quantize_int8(fixture_graph, reduce_range=False)) > 64  # the check can fail


@pytest.mark.parametrize(
    "flags, vnni, bf16",
    [("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\nbugs\t: x", True, True),
     ("flags\t: fpu avx2 avx_vnni amx_bf16", True, True), ("flags\t: fpu avx2 avx512f", False, False),
     ("flags\t: fpu avx2 avx512_vnni_x", False, False), ("Features\t: fp asimd", None, None)],
)  # fmt: skip
def test_cpu_number_formats_are_read_from_the_flags(flags, vnni, bf16):
    assert cpu.cpu_has_vnni(flags) is vnni and cpu.cpu_has_bf16(flags) is bf16


def test_a_graph_without_the_chosen_products_cannot_be_quantised(fixture_graph, monkeypatch):
    """A model whose graph has none of the products asked for (here: no node in any part) is refused
    in one line, not with the quantizer's traceback."""
    monkeypatch.setattr(quantize, "node_parts", lambda proto: {})
    with pytest.raises(UserError, match="no matrix products to quantise"):
        deploy.quantize_int8(fixture_graph)


def test_a_quantizer_refusal_is_one_line(fixture_graph, monkeypatch):
    import onnxruntime.quantization

    def refuses(*args, **kwargs):
        raise ValueError("the weight of MatMul_3 is computed in the graph\nmore detail")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", refuses)
    message = (
        "cannot quantise this model to int8 (the weight of MatMul_3 is computed in the graph); export it with "
        "--precision fp32, or choose other --int8-parts"
    )
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        deploy.quantize_int8(fixture_graph)


def test_quantization_report_prints_every_layer_and_the_parts(tiny_folder, capsys, monkeypatch):
    report = load_script("quantization_report")
    monkeypatch.setattr(report, "cpu_has_vnni", lambda: False)  # a CPU where int8 cannot pay: said
    monkeypatch.setattr(report, "cpu_has_bf16", lambda: True)
    audio = sorted((BUNDLED_CORPUS / "dev-clean").rglob("*.flac"))[:2]
    code = report.main([str(tiny_folder), "--audio", *map(str, audio), "--max-seconds", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "int8  linear" in out and "float cnn" in out and "float attention_maps" in out
    for row in ("last", "hidden 0", "hidden 2", "projected 2", "worst layer", "worst frame"):
        assert f"\n{row} " in out, row
    assert "bf16 weights" in out and "bf16 autocast" in out
    assert "this CPU has no VNNI" in out and "no native bf16" not in out


def test_quantization_report_refuses_missing_audio(tiny_folder, tmp_path, capsys):
    report = load_script("quantization_report")
    code = report.main([str(tiny_folder), "--audio", str(tmp_path / "none.flac")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"quantization_report.py: error: --audio {tmp_path / 'none.flac'} is not a file"


def test_benchmark_runtimes_times_every_runtime_interleaved(tmp_path, capsys, monkeypatch):
    benchmark = load_script("benchmark_runtimes")
    small = tiny_config(num_hidden_layers=2, layer_reuses_attention_map=[False, True])
    monkeypatch.setitem(benchmark.PRESETS, "tiny", {})
    monkeypatch.setattr(benchmark.ARMHubertConfig, "from_preset", classmethod(lambda cls, name: small))
    monkeypatch.setattr(benchmark, "hubert_base", lambda: random_model(small, seed=1))
    targets = [dataclasses.replace(target, cases=("2x0.5",)) for target in benchmark.TARGETS]
    monkeypatch.setattr(benchmark, "TARGETS", targets)
    argv = ["--models", "tiny", "--cases", "1x0.5", "2x0.5", "--repeats", "1", "--warmup", "0", "--threads", "1"]
    report = benchmark.benchmark([*argv, "--output_dir", str(tmp_path)])
    out = capsys.readouterr().out
    runtimes = [subject["runtime"] for subject in report["subjects"]]
    assert runtimes == ["pytorch-fp32", *benchmark.RUNTIMES]
    assert list(report["median_seconds"]) == ["1x0.5", "2x0.5"]
    assert all(len(times) == 7 and min(times) > 0 for times in report["median_seconds"].values())
    # The four targets, for the target case only, each a ratio of this run's medians.
    times = dict(zip(runtimes[1:], report["median_seconds"]["2x0.5"][1:]))
    targets = {(t["runtime"], t["reference"][0]): t for t in report["targets"]}  # None: the same model
    assert [t["case"] for t in report["targets"]] == ["2x0.5"] * 4 and len(targets) == 4
    check = targets["onnx-int8", None]
    assert check["ratio"] == times["onnx-int8"] / times["pytorch-fp32"] and check["passed"] == (check["ratio"] <= 0.35)
    assert "deployment targets" in out and out.count("pass") + out.count("FAIL") == 4
    assert "/ HuBERT Base" in out and "RTF" in out and (tmp_path / "benchmark_runtimes.json").is_file()
    sizes = {s["runtime"]: s["file_bytes"] for s in report["subjects"][1:]}
    assert sizes["onnx-int8"] < sizes["onnx-fp32"] and sizes["pytorch-bf16"] < sizes["pytorch-fp32"]


def test_benchmark_runtimes_refuses_a_bad_case(capsys):
    benchmark = load_script("benchmark_runtimes")
    assert benchmark.main(["--cases", "ten"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "benchmark_runtimes.py: error: --cases 'ten': expected BATCHxSECONDS, e.g. 1x10 or 8x10"
    )


def test_optimize_for_cpu_matches_eager_and_leaves_the_model_alone():
    model = random_model(tiny_config(num_hidden_layers=2, layer_reuses_attention_map=[False, True]), seed=4)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    audio = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    expected = deploy.run_torch(model, audio)
    fast = deploy.optimize_for_cpu(model)
    for name, value in deploy.run_torch(fast, audio).items():
        np.testing.assert_allclose(value, expected[name], atol=1e-4, rtol=1e-4, err_msg=name)
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    np.testing.assert_array_equal(deploy.run_torch(model, audio)["hidden_states"], expected["hidden_states"])


def test_onednn_products_match_pytorch_and_step_aside_for_autograd(monkeypatch):
    """Every linear layer's product the mode takes gives PyTorch's numbers; products of two activations
    (whose oneDNN kernel would be rebuilt on every call) and everything with autograd on stay PyTorch's;
    a changed weight is re-packed."""
    calls = []
    linear = cpu._onednn_linear
    monkeypatch.setattr(cpu, "_onednn_linear", lambda *args: calls.append(1) or linear(*args))
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 5, 8, generator=generator), torch.randn(2, 3, 8, 6, generator=generator)
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 5, 8, generator=generator)
    taken = {
        "linear": lambda: layer(x),
        "linear, transposed input": lambda: torch.nn.functional.linear(x.transpose(1, 2).mT, layer.weight),
    }
    left_alone = {
        "matmul 4-D": lambda: a @ b,
        "bmm": lambda: torch.bmm(a[0], b[0]),
        "linear with an activation as weight": lambda: torch.nn.functional.linear(a[0, 0], b[0, 0].mT),
    }
    with torch.no_grad():
        expected = {name: product() for name, product in {**taken, **left_alone}.items()}
    mode = cpu.OneDNNProducts()
    for products, expect_calls in ((taken, 1), (left_alone, 0)):
        for name, product in products.items():
            calls.clear()
            with torch.no_grad(), mode:
                got = product()
            torch.testing.assert_close(got, expected[name], atol=1e-5, rtol=1e-5, msg=name)
            assert len(calls) == expect_calls, name
    with torch.no_grad():
        layer.weight.mul_(2)
        doubled = layer(x)
    with torch.no_grad(), mode:
        torch.testing.assert_close(layer(x), doubled, atol=1e-5, rtol=1e-5)
    calls.clear()
    with mode:
        layer(x).sum().backward()
    assert not calls and layer.weight.grad is not None
