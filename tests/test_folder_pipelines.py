"""`pipeline(model=folder, trust_remote_code=True)` without a task picks each folder's own pipeline."""

import json
import types

import numpy as np
import pytest
from helpers import random_model, tiny_config
from transformers import AudioClassificationPipeline, AutomaticSpeechRecognitionPipeline, Wav2Vec2CTCTokenizer, pipeline
from transformers.models.auto import configuration_auto, modeling_auto

from armhubert import finetune
from armhubert.convert.folders import save_model_folder
from armhubert.remote_code import add_remote_code_entries
from modeling_armhubert import ARMHubertForCTC, ARMHubertForSequenceClassification
from pipeline_armhubert import FEATURE_EXTRACTION_TASK, release_feature_extractor

LABELS = ["yes", "no", "maybe"]
AUTO_MAPPINGS = (
    configuration_auto.CONFIG_MAPPING,
    modeling_auto.MODEL_MAPPING,
    modeling_auto.MODEL_FOR_CTC_MAPPING,
    modeling_auto.MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING,
)


@pytest.fixture(autouse=True, scope="module")
def local_auto_classes():
    """Importing a folder's remote code registers its classes under "armhubert"; later tests expect this repo's."""
    saved = [dict(mapping._extra_content) for mapping in AUTO_MAPPINGS]
    yield
    for mapping, content in zip(AUTO_MAPPINGS, saved):
        mapping._extra_content.clear()
        mapping._extra_content.update(content)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An encoder folder (as converted), and a CTC and a classifier folder fine-tuned from it."""
    root = tmp_path_factory.mktemp("folders")
    save_model_folder(random_model(tiny_config()), root / "encoder")
    vocab = {"[PAD]": 0, "[UNK]": 1, "|": 2, **{char: i + 3 for i, char in enumerate("ABCDEFGH")}}
    (root / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(root / "vocab.json"), word_delimiter_token="|", bos_token=None, eos_token=None)
    heads = {
        "ctc": (ARMHubertForCTC, dict(vocab_size=len(vocab))),
        "classifier": (
            ARMHubertForSequenceClassification,
            dict(num_labels=3, id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)}),
        ),
    }
    for name, (head_class, head_config) in heads.items():
        # The config comes from the encoder folder, feature pipeline included: it must be replaced.
        model = head_class.from_pretrained(root / "encoder", **head_config)
        add_remote_code_entries(model.config, type(model))
        model.save_pretrained(root / name)
        release_feature_extractor().save_pretrained(root / name)
        if name == "ctc":
            tokenizer.save_pretrained(root / name)
    return root


def test_each_folder_records_only_its_own_pipeline(folders):
    tasks = {
        name: json.loads((folders / name / "config.json").read_text())["custom_pipelines"]
        for name in ("encoder", "ctc", "classifier")
    }
    assert list(tasks["encoder"]) == [FEATURE_EXTRACTION_TASK]
    assert tasks["ctc"] == {
        "automatic-speech-recognition": {
            "impl": "pipeline_armhubert.AutomaticSpeechRecognitionPipeline",
            "pt": ["AutoModelForCTC"],
            "type": "audio",
        }
    }
    assert list(tasks["classifier"]) == ["audio-classification"]


def test_pipeline_without_a_task_picks_the_folders_pipeline(folders):
    audio = (0.1 * np.random.RandomState(0).randn(16000)).astype(np.float32)
    asr = pipeline(model=str(folders / "ctc"), trust_remote_code=True)
    assert isinstance(asr, AutomaticSpeechRecognitionPipeline) and type(asr.model).__name__ == "ARMHubertForCTC"
    assert isinstance(asr(audio)["text"], str)
    classify = pipeline(model=str(folders / "classifier"), trust_remote_code=True)
    assert isinstance(classify, AudioClassificationPipeline)
    assert type(classify.model).__name__ == "ARMHubertForSequenceClassification"
    assert sorted(entry["label"] for entry in classify(audio, top_k=3)) == sorted(LABELS)
    features = pipeline(model=str(folders / "encoder"), trust_remote_code=True)
    assert type(features).__name__ == "ARMHubertFeatureExtractionPipeline"
    assert type(features.model).__name__ == "ARMHubertModel"


def test_fine_tuning_saves_the_heads_pipeline(monkeypatch, tmp_path):
    saved = {}
    monkeypatch.setattr(
        finetune, "save_trained_model", lambda trainer, output_dir, card: saved.update(config=trainer.model.config)
    )
    model = ARMHubertForCTC(tiny_config(vocab_size=8))
    model.config.custom_pipelines = {FEATURE_EXTRACTION_TASK: {"impl": "x.Y"}}  # as loaded from an encoder folder
    trainer = types.SimpleNamespace(
        model=model,
        train=lambda: types.SimpleNamespace(global_step=1),
        evaluate=lambda: {},
        log_metrics=lambda *args: None,
        state=types.SimpleNamespace(log_history=[]),
        args=types.SimpleNamespace(save_total_limit=None, should_save=True),
        add_callback=lambda callback: None,
    )
    finetune.train_evaluate_and_save(trainer, tmp_path, lambda metrics, steps: "card")
    assert list(saved["config"].custom_pipelines) == ["automatic-speech-recognition"]
