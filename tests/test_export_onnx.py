"""scripts/export_onnx.py: dynamic-axis ONNX export, onnxruntime parity, latency report, clean failures."""

import numpy as np
import pytest
import soundfile
import torch
from helpers import load_script, random_model, tiny_config

from armhubert.convert.folders import save_model_folder
from armhubert.deploy.graph import quiet_exporter
from configuration_armhubert import receptive_field

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
export_onnx = load_script("export_onnx")


def small_converted_model(folder):
    """A converted folder of a 2-layer model with map reuse and heads (a small graph: export takes a while)."""
    config = tiny_config(
        conv_dim=[32, 32, 48],
        conv_kernel=[10, 8, 4],
        conv_stride=[5, 8, 8],
        num_hidden_layers=2,
        layer_reuses_attention_map=[False, True],
    )
    model = random_model(config, seed=7)
    save_model_folder(model, folder)
    return model


def test_export_has_dynamic_axes_matches_pytorch_and_reports_latency(tmp_path, capsys, monkeypatch):
    model = small_converted_model(tmp_path / "model")
    output = tmp_path / "onnx" / "model.onnx"
    code = export_onnx.main(
        [str(tmp_path / "model"), "--output", str(output), "--latency-seconds", "1", "--latency-runs", "2"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "projected_hidden_states" in captured.out and "CPU latency, 1 x 1 s" in captured.out
    assert sorted(p.name for p in output.parent.iterdir()) == ["model.onnx"]  # no staging leftovers

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    batch_axis, time_axis = session.get_inputs()[0].shape
    assert isinstance(batch_axis, str) and isinstance(time_axis, str)  # symbolic, not fixed sizes
    # A batch size and length of its own, including the shortest input the graph accepts.
    shortest = export_onnx.min_samples(model.config)
    assert shortest == receptive_field(model.config.conv_kernel, model.config.conv_stride) + 320  # two frames
    for batch, samples in [(1, shortest), (4, 12345)]:
        audio = 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(samples))
        got = session.run(None, {"input_values": audio.numpy()})
        with torch.no_grad():
            expected = model(audio, output_hidden_states=True)
        want = [
            expected.last_hidden_state,
            torch.stack(expected.hidden_states),
            torch.stack(expected.projected_hidden_states),
        ]
        assert [o.name for o in session.get_outputs()] == list(export_onnx.OUTPUT_NAMES)
        for onnx_value, torch_value in zip(got, want):
            np.testing.assert_allclose(onnx_value, torch_value.numpy(), atol=1e-4, rtol=1e-4)

    # An existing file is kept unless --overwrite.
    code = export_onnx.main([str(tmp_path / "model"), "--output", str(output)])
    assert code == 2 and "pass --overwrite" in capsys.readouterr().err

    # A failed parity check is status 1 and leaves the existing file as it was (the export is reused).
    written = output.read_bytes()
    monkeypatch.setattr(export_onnx, "export_onnx", lambda model, opset=None: written)
    code = export_onnx.main([str(tmp_path / "model"), "--output", str(output), "--overwrite", "--atol", "1e-30"])
    err = capsys.readouterr().err
    assert code == 1 and "export_onnx.py: error: parity check failed" in err and f"{output} was not written" in err
    assert output.read_bytes() == written and sorted(p.name for p in output.parent.iterdir()) == ["model.onnx"]


def test_bad_model_is_one_line_and_writes_nothing(tmp_path, capsys):
    code = export_onnx.main([str(tmp_path / "no-such-model"), "--output", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.startswith("export_onnx.py: error: cannot load the model")
        and len(err.strip().splitlines()) == 1
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--output", "{model}/model.onnx"], "is inside the input"),
        (["--output", "{model}/model.safetensors"], "--output {model}/model.safetensors must name a .onnx file"),
        (["--output", "{tmp}/x.onnx", "--opset", "1"], "--opset must be an integer in [7, 30], got 1"),
        (["--output", "{tmp}/x.onnx", "--latency_runs", "0"], "--latency_runs must be an integer in [1, 10000], got 0"),
        (["--output", "{tmp}/x.onnx", "--latency_seconds", "inf"], "--latency_seconds must be a finite number"),
        (["--output", "{tmp}/x.onnx", "--atol", "nan"], "--atol must be a finite number"),
        (["--output", "{tmp}/x.onnx", "--threads", "-1"], "--threads must be an integer >= 1, got -1"),
    ],
)
def test_bad_options_are_one_line_before_any_export(tiny_model_dir, tmp_path, capsys, extra, message):
    before = sorted(p.name for p in tiny_model_dir.iterdir())
    argv = [str(tiny_model_dir)] + [a.format(model=tiny_model_dir, tmp=tmp_path) for a in extra]
    code = export_onnx.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message.format(model=tiny_model_dir) in err[0], err
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == before and list(tmp_path.iterdir()) == []


def test_quantization_report_refuses_audio_it_cannot_measure(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Too many --audio files, a file shorter than the model's receptive field, no bundled audio to fall back on,
    and a --threads torch cannot set: one line each, exit status 2."""
    report = load_script("quantization_report")
    short, shortest = tmp_path / "short.wav", report.min_samples(tiny_config())
    soundfile.write(short, np.zeros(shortest - 1, dtype=np.float32), 16000)
    cases = {
        "--audio names 1001 files; at most 1000 (a sample of your audio is enough)": ["--audio", *[str(short)] * 1001],
        f"{short} has {shortest - 1} samples at 16 kHz, fewer than the model's {shortest}": ["--audio", str(short)],
        "--threads must be an integer >= 1, got -1": ["--threads", "-1"],  # was torch's traceback, after the load
    }
    for message, argv in cases.items():
        assert report.main([str(tiny_model_dir), *argv]) == 2
        assert capsys.readouterr().err.strip() == f"quantization_report.py: error: {message}"
    monkeypatch.setattr(report, "BUNDLED_CORPUS", tmp_path / "LibriSpeech")
    assert report.main([str(tiny_model_dir)]) == 2
    message = f"no bundled audio under {tmp_path / 'LibriSpeech' / 'dev-clean'}; pass --audio FILES"
    assert capsys.readouterr().err.strip() == f"quantization_report.py: error: {message}"


# Every attention path as export takes it (`choose_attention` while exporting): the reusing pair of layers 0-1,
# and layer 2, a computing layer whose map nobody reuses. 4 s of audio: 199 frames, past `explicit_map_elements`,
# where inference would take the fused kernels (a private CPU op, and block loops over the batch).
EXPORT_PATHS = {
    "resoftmax": {},
    "probabilities": dict(reuse_softmax="probabilities"),
    "eager": dict(attn_implementation="eager"),
}
FOUR_SECONDS = 64000


def export_model(path):
    config = tiny_config(num_hidden_layers=3, layer_reuses_attention_map=[False, True, False], **EXPORT_PATHS[path])
    return random_model(config, seed=3)


def padded_audio(batch):
    """(B, 4 s) audio and its mask, the second row padded after 2.5 s."""
    audio = 0.1 * torch.randn(batch, FOUR_SECONDS, generator=torch.Generator().manual_seed(batch))
    mask = torch.ones(batch, FOUR_SECONDS, dtype=torch.long)
    mask[1:, 40000:] = 0
    return audio * mask, mask


class LastHiddenState(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_values, attention_mask):
        return self.model(input_values, attention_mask=attention_mask).last_hidden_state


@pytest.mark.parametrize("path", ["resoftmax", "probabilities"])
def test_torch_export_with_a_dynamic_batch_takes_batch_one(path):
    """Traced on a batch of 2 without autograd, as transformers' HubertModel, the program takes 1 and 3 rows: no
    attention path choice guards the batch size."""
    model = export_model(path).eval()
    audio, mask = padded_audio(2)
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        program = torch.export.export(
            LastHiddenState(model).eval(), (audio, mask), dynamic_shapes=({0: batch}, {0: batch}), strict=False
        )
        for rows in (1, 3):
            audio, mask = padded_audio(rows)
            expected = model(audio, attention_mask=mask).last_hidden_state
            torch.testing.assert_close(program.module()(audio, mask), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", sorted(EXPORT_PATHS))
def test_onnx_exporter_matches_pytorch_within_1e_4_on_every_attention_path(path):
    """torch's ONNX exporter (as transformers' docs use it) on 4 s of audio with a dynamic batch: ONNX Runtime's
    outputs for a padded batch of 2 and for 1 row are within 1e-4 of PyTorch's inference (the fused path)."""
    model = export_model(path).eval()
    audio, mask = padded_audio(2)
    batch = torch.export.Dim("batch")
    with torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(
            LastHiddenState(model).eval(),
            (audio, mask),
            dynamo=True,
            input_names=["input_values", "attention_mask"],
            dynamic_shapes=({0: batch}, {0: batch}),
            verbose=False,
        )
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for rows in (2, 1):
        audio, mask = padded_audio(rows)
        (got,) = session.run(None, {"input_values": audio.numpy(), "attention_mask": mask.numpy()})
        with torch.inference_mode():
            expected = model(audio, attention_mask=mask).last_hidden_state
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-4)


def test_parity_of_padded_rows_reads_only_their_real_frames():
    """Frames past a padded row's end are dropped by the frame mask and filled differently by each runtime;
    the parity measure compares the frames a reader gets (a tiny group-norm model differed by 1e-3 there)."""
    from armhubert.deploy.fidelity import max_abs_differences

    reference = {"last_hidden_state": np.zeros((2, 3, 4)), "hidden_states": np.zeros((5, 2, 3, 4))}
    candidate = {name: value.copy() for name, value in reference.items()}
    for value in candidate.values():
        value[..., 1, 2, :] = 1.0  # row 1's last frame: padding
        value[..., 0, 0, :] = 1e-6  # a real frame, off by 1e-6
    frames = np.array([[True, True, True], [True, True, False]])
    assert max_abs_differences(reference, candidate) == {"last_hidden_state": 1.0, "hidden_states": 1.0}
    assert max_abs_differences(reference, candidate, frames) == {"last_hidden_state": 1e-6, "hidden_states": 1e-6}
