"""The s3prl bridge with s3prl broken in each way seen with s3prl 0.4.18 (fake packages: s3prl is not installed)."""

import sys
import textwrap
import types

import pytest
import torch
from helpers import load_script, random_model, tiny_config

BROKEN = {
    "tensorboardX": (
        "import tensorboardX",
        "s3prl needs tensorboardX (No module named 'tensorboardX'): pip install tensorboardX",
    ),
    "huggingface_hub": (
        "from huggingface_hub import HfFolder",
        "delete HfFolder and Repository from the `from huggingface_hub import` line of s3prl/downstream/runner.py",
    ),
    "torchaudio": (
        "raise AttributeError(\"module 'torchaudio' has no attribute 'set_audio_backend'\")",
        "s3prl calls torchaudio.set_audio_backend, which this torchaudio no longer has",
    ),
}


def fake_s3prl(root, init="", downstream=True):
    """A package named s3prl under root: `init` runs on import; hub and run_downstream record the call."""
    package = root / "s3prl"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(init + "\n")
    (package / "hub.py").write_text("")
    (package / "run_downstream.py").write_text(
        textwrap.dedent("""
        import sys
        calls = []
        def main():
            calls.append(list(sys.argv))
    """)
    )
    if downstream:
        (root / "downstream" / "asr").mkdir(parents=True)
        (root / "downstream" / "asr" / "config.yaml").write_text("runner: {}\n")
    return root


@pytest.fixture()
def with_path(monkeypatch):
    def install(root):
        monkeypatch.syspath_prepend(str(root))
        monkeypatch.chdir(root)
        for name in [name for name in sys.modules if name == "s3prl" or name.startswith("s3prl.")]:
            monkeypatch.delitem(sys.modules, name)

    return install


def error_line(capsys, code):
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("what", sorted(BROKEN))
def test_each_import_failure_is_one_line_naming_the_fix(what, tmp_path, with_path, capsys):
    statement, fix = BROKEN[what]
    with_path(fake_s3prl(tmp_path, statement))
    superb = load_script("superb_upstream")  # the script itself imports with s3prl broken
    line = error_line(capsys, superb.main(["-m", "train", "-u", "armhubert_local", "-k", "x", "-d", "asr", "-n", "a"]))
    assert line.startswith("superb_upstream.py: error: ") and fix in line, line
    assert superb.main(["--help"]) == 0 and fix in capsys.readouterr().out


def test_missing_s3prl_and_missing_configs_say_clone(tmp_path, with_path, capsys, monkeypatch):
    with_path(tmp_path)  # nothing named s3prl there
    monkeypatch.setitem(sys.modules, "s3prl", None)  # an installed s3prl elsewhere stays invisible
    superb = load_script("superb_upstream")
    line = error_line(capsys, superb.main(["-m", "train", "-d", "asr"]))
    assert "s3prl is not installed" in line and "git clone https://github.com/s3prl/s3prl" in line
    assert superb.main(["--help"]) == 0 and "usage" not in capsys.readouterr().err

    monkeypatch.delitem(sys.modules, "s3prl")
    pypi = fake_s3prl(tmp_path / "pypi", downstream=False)
    with_path(pypi)
    line = error_line(capsys, superb.main(["-m", "train", "-u", "armhubert_local", "-k", "x", "-d", "asr", "-n", "a"]))
    assert "no downstream/asr/config.yaml" in line and "not the PyPI package" in line and "git clone" in line


def test_a_working_setup_runs_s3prl_with_the_expert_registered(tmp_path, with_path):
    with_path(fake_s3prl(tmp_path))
    superb = load_script("superb_upstream")
    argv = ["-m", "train", "-u", "armhubert_local", "-k", "x", "-d", "asr", "-n", "a"]
    assert superb.main(argv) == 0
    import s3prl.hub
    import s3prl.run_downstream

    assert s3prl.run_downstream.calls == [["run_downstream.py", *argv]]
    assert s3prl.hub.armhubert_local is superb.armhubert_local


def test_trainable_upstream_has_no_layer_grad_scale(tmp_path):
    model = random_model(tiny_config(layer_grad_scale="release"))
    model.save_pretrained(tmp_path)
    superb = load_script("superb_upstream")
    expert = superb.UpstreamExpert(str(tmp_path))
    assert not expert.model.config.layer_grad_scale
    # The setting matters: with the saved "release" scale the first layer's gradients come out damped.
    from modeling_armhubert import ARMHubertModel

    scaled = ARMHubertModel.from_pretrained(tmp_path).train()
    assert scaled.config.layer_grad_scale
    expert.model.train()
    wavs = [torch.randn(8000, generator=torch.Generator().manual_seed(0))]
    torch.manual_seed(1)  # the same dropout masks in both runs
    expert(wavs)["last_hidden_state"].sum().backward()
    torch.manual_seed(1)
    superb.UpstreamExpert.forward(types.SimpleNamespace(model=scaled), wavs)["last_hidden_state"].sum().backward()
    first = "encoder.layers.0.feed_forward.output_dense.weight"
    grads = {
        name: dict(model.named_parameters())[first].grad for name, model in (("off", expert.model), ("release", scaled))
    }
    assert not torch.allclose(grads["off"], grads["release"])


def test_check_takes_one_model_and_the_hub_entry_needs_one(capsys):
    """`--check MODEL_DIR` and nothing else (no s3prl needed); s3prl calls the hub entry with ckpt None when
    -u armhubert_local comes without -k."""
    superb = load_script("superb_upstream")
    line = error_line(capsys, superb.main(["--check", "a", "b"]))
    assert line == "superb_upstream.py: error: --check takes one argument: superb_upstream.py --check MODEL_DIR"
    with pytest.raises(superb.UserError, match=r"^-u armhubert_local needs -k MODEL_DIR \(a saved ARMHubert model"):
        superb.armhubert_local(None)
