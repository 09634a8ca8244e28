"""A multi-model repository root without weights: every tool that takes a model folder names its subfolders."""

import pytest
from helpers import load_script, random_model, tiny_config

from armhubert.cli import UserError
from armhubert.files.placement import previous_output_problem
from armhubert.folders.model_folders import check_model_folder, is_model_folder, variant_subfolders
from armhubert.training.finetune import ModelArguments, load_head_model
from modeling_armhubert import ARMHubertForCTC


@pytest.fixture(scope="module")
def bare_repository(tmp_path_factory):
    """Two variants in subfolders, code-less and weight-less root (a hand-made or older repository)."""
    repo = tmp_path_factory.mktemp("repo")
    for name, seed in (("small", 0), ("large", 1)):
        random_model(tiny_config(), seed=seed).save_pretrained(repo / name)
    (repo / "notes").mkdir()  # a subfolder without a model is not a choice
    (repo / "README.md").write_text("# two models\n")
    return repo


def test_helper_names_the_variants(bare_repository):
    assert variant_subfolders(bare_repository) == ["large", "small"]
    with pytest.raises(UserError) as refused:
        check_model_folder(bare_repository)
    assert str(refused.value) == (
        f"{bare_repository} is a multi-model repository; pass --subfolder (or subfolder=) one of: large, small"
    )
    with pytest.raises(
        UserError, match=f"give one model's folder, {bare_repository}/NAME, with NAME one of: large, small"
    ):
        check_model_folder(bare_repository, subfolder_option=None)
    with pytest.raises(UserError, match="has no subfolder medium; its model subfolders are: large, small"):
        check_model_folder(bare_repository, "medium")
    check_model_folder(bare_repository, "small")  # a variant, by subfolder or by path, passes
    check_model_folder(bare_repository / "large")
    check_model_folder("some-user/some-model")  # a Hub id is from_pretrained's business
    check_model_folder(bare_repository / "notes")  # not a repository: from_pretrained reports what is missing


def test_one_rule_says_what_a_model_folder_is_for_every_tool(tmp_path):
    """Safetensors or pickled weights beside config.json: a model for the repository check and for --overwrite."""
    for weights in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        folder = tmp_path / weights
        folder.mkdir()
        (folder / weights).write_bytes(b"")
        assert not is_model_folder(folder)  # weights without a config are no model
        (folder / "config.json").write_text('{"model_type": "armhubert"}')
        assert is_model_folder(folder)
    assert previous_output_problem(tmp_path / "model.safetensors") is None  # ours: --overwrite may replace it
    # Another tool's model is a model, but not ours to replace: its pickled weights are named.
    assert "pytorch_model.bin" in previous_output_problem(tmp_path / "pytorch_model.bin")
    assert variant_subfolders(tmp_path) == sorted(path.name for path in tmp_path.iterdir())


def one_error_line(capsys, code, prog):
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


def test_export_onnx_asks_for_subfolder(bare_repository, tmp_path, capsys):
    export_onnx = load_script("export_onnx")
    code = export_onnx.main([str(bare_repository), "--output", str(tmp_path / "m.onnx")])
    line = one_error_line(capsys, code, "export_onnx.py")
    assert "is a multi-model repository; pass --subfolder (or subfolder=) one of: large, small" in line
    assert not (tmp_path / "m.onnx").exists()


def test_superb_check_and_quickstart_ask_for_a_variant_folder(bare_repository, capsys):
    superb = load_script("superb_upstream")
    line = one_error_line(capsys, superb.main(["--check", str(bare_repository)]), "superb_upstream.py")
    assert f"{bare_repository} is a multi-model repository; give one model's folder" in line and "large, small" in line
    with pytest.raises(UserError, match="multi-model repository"):
        superb.UpstreamExpert(str(bare_repository))
    quickstart = load_script("quickstart")
    line = one_error_line(capsys, quickstart.main(["--model", str(bare_repository)]), "quickstart.py")
    assert "is a multi-model repository" in line and "large, small" in line


def test_finetune_loading_asks_for_a_variant_folder(bare_repository):
    with pytest.raises(UserError, match="is a multi-model repository; give one model's folder.*large, small"):
        load_head_model(ARMHubertForCTC, ModelArguments(model_name_or_path=str(bare_repository)), vocab_size=8)
    model = load_head_model(
        ARMHubertForCTC, ModelArguments(model_name_or_path=str(bare_repository / "small")), vocab_size=8
    )
    assert model.config.vocab_size == 8


def test_the_model_folder_door_reads_and_sizes_a_config_once(bare_repository, monkeypatch):
    """`open_model_folder` checks the folder; the encoder's loads trust its `ModelFolder`, nothing is checked twice."""
    import torch

    from armhubert.features.encoding import load_encoder
    from armhubert.folders import model_folders

    sized = []
    check_model_size = model_folders.check_model_size
    monkeypatch.setattr(model_folders, "check_model_size", lambda *args: sized.append(1) or check_model_size(*args))
    folder = model_folders.open_model_folder(bare_repository / "small")
    assert folder.config.model_type == "armhubert" and folder.architecture == "ARMHubertModel" and len(sized) == 1
    load_encoder(str(bare_repository / "small"), None, False, torch.device("cpu"))
    assert len(sized) == 2  # one more folder opened, its config sized once (twice before the door)


_FOLDER_CODE = """
import torch
from transformers import PretrainedConfig, PreTrainedModel


class FolderConfig(PretrainedConfig):
    model_type = "folder-code-model"

    def __init__(self, width=4, **kwargs):
        self.width = width
        super().__init__(**kwargs)


class FolderModel(PreTrainedModel):
    config_class = FolderConfig

    def __init__(self, config):
        super().__init__(config)
        self.linear = torch.nn.Linear(config.width, config.width)
        self.post_init()
"""


def test_a_folder_with_its_own_code_loads_when_trusted(tmp_path):
    """--trust_remote_code lets the folder's code build its config and its model (the load was refused before)."""
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel

    from armhubert.folders.model_folders import open_model_folder

    folder = tmp_path / "own-code"
    folder.mkdir()
    (folder / "folder_code.py").write_text(_FOLDER_CODE)
    auto_map = {"AutoConfig": "folder_code.FolderConfig", "AutoModel": "folder_code.FolderModel"}
    config = {"model_type": "folder-code-model", "auto_map": auto_map, "architectures": ["FolderModel"], "width": 4}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"linear.weight": torch.eye(4), "linear.bias": torch.zeros(4)}, folder / "model.safetensors")
    with pytest.raises(UserError, match="pass --trust_remote_code"):
        open_model_folder(folder).load(AutoModel.from_pretrained)
    model = open_model_folder(folder, trust_remote_code=True).load(AutoModel.from_pretrained)
    assert type(model).__name__ == "FolderModel" and torch.equal(model.linear.weight, torch.eye(4))
