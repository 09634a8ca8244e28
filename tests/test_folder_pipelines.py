"""`pipeline(model=folder, trust_remote_code=True)` without a task picks each folder's own pipeline."""

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers import ROOT, random_model, tiny_config
from transformers import AudioClassificationPipeline, AutomaticSpeechRecognitionPipeline, Wav2Vec2CTCTokenizer, pipeline
from transformers.models.auto import configuration_auto, modeling_auto

import pipeline_armhubert
from armhubert.convert.folders import save_model_folder
from armhubert.folders.remote_code import add_remote_code_entries, ship_pipeline
from armhubert.training import finetune
from modeling_armhubert import ARMHubertForCTC, ARMHubertForSequenceClassification
from pipeline_armhubert import FEATURE_EXTRACTION_TASK, read_audio_file, release_feature_extractor

LABELS = ["yes", "no", "maybe"]
FLAC = ROOT / "data" / "LibriSpeech" / "dev-clean" / "1001" / "201" / "1001-201-0000.flac"
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
        ship_pipeline(root / name)
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
            "impl": "pipeline_armhubert.ARMHubertSpeechRecognitionPipeline",
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
        train=lambda resume_from_checkpoint=None: types.SimpleNamespace(global_step=1),
        evaluate=lambda: {},
        log_metrics=lambda *args: None,
        state=types.SimpleNamespace(log_history=[], global_step=1),
        args=types.SimpleNamespace(
            save_total_limit=None, should_save=True, resume_from_checkpoint=None, output_dir=str(tmp_path)
        ),
        add_callback=lambda callback: None,
    )
    finetune.train_evaluate_and_save(trainer, tmp_path, lambda metrics, steps: "card")
    assert list(saved["config"].custom_pipelines) == ["automatic-speech-recognition"]


@pytest.fixture
def no_ffmpeg(monkeypatch, tmp_path):
    """PATH without ffmpeg (an empty folder): transformers' own audio pipelines then cannot read files."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert shutil.which("ffmpeg") is None


def comparable(output):
    """A pipeline output as plain values: text, (label, score) pairs, or a feature array."""
    if isinstance(output, list):
        return [(entry["label"], round(entry["score"], 6)) for entry in output]
    return output["text"] if "text" in output else output["features"]


@pytest.mark.parametrize("name", ["ctc", "classifier", "encoder"])
def test_each_folders_pipeline_reads_a_flac_path_bytes_and_undecoded_dicts_without_ffmpeg(folders, no_ffmpeg, name):
    run = pipeline(model=str(folders / name), trust_remote_code=True)
    assert type(run).__name__.startswith("ARMHubert")  # the folder's own pipeline, not transformers' ffmpeg one
    samples, rate = soundfile.read(FLAC, dtype="float32")
    assert rate == 16000
    expected = comparable(run(samples))
    for audio in (str(FLAC), FLAC, FLAC.read_bytes(), {"path": str(FLAC), "bytes": None}):
        np.testing.assert_array_equal(comparable(run(audio)), expected)


def test_file_decoding_resamples_averages_channels_and_names_what_failed(no_ffmpeg, tmp_path, monkeypatch):
    samples, _ = soundfile.read(FLAC, dtype="float32")
    soundfile.write(tmp_path / "stereo-8k.wav", np.stack([samples[::2], samples[::2]], axis=1), 8000)
    resampled = read_audio_file(tmp_path / "stereo-8k.wav")
    assert resampled.dtype == np.float32 and resampled.shape == (2 * len(samples[::2]),)
    (tmp_path / "broken.flac").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match=r"broken.flac: soundfile cannot decode it .*ffmpeg is not on PATH"):
        read_audio_file(tmp_path / "broken.flac")
    with pytest.raises(ValueError, match="missing.flac does not exist"):
        read_audio_file(tmp_path / "missing.flac")
    soundfile.write(tmp_path / "nan.wav", np.array([0.1, np.nan] * 400, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="nan.wav holds NaN or infinite samples"):
        read_audio_file(tmp_path / "nan.wav")
    monkeypatch.setattr(pipeline_armhubert, "MAX_AUDIO_SECONDS", 1)  # the header is read before any decoding
    with pytest.raises(ValueError, match=r"declares 1 channels and \d+ s; at most 64 channels and 1 s are read"):
        read_audio_file(FLAC)
    monkeypatch.setitem(sys.modules, "soundfile", None)  # as on a machine without it: import fails
    with pytest.raises(ValueError, match="soundfile and soxr are not installed .*ffmpeg is not on PATH"):
        read_audio_file(FLAC)


def test_ffmpeg_decodes_what_soundfile_cannot_when_it_is_on_path(tmp_path, monkeypatch):
    """The fallback: a stand-in `ffmpeg` on PATH that answers transformers' f32le pipe protocol."""
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "ffmpeg"
    fake.write_text(
        f"#!{sys.executable}\nimport sys, numpy\nsys.stdin.buffer.read()\n"
        "sys.stdout.buffer.write(numpy.full(800, 0.25, dtype=numpy.float32).tobytes())\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    (tmp_path / "speech.webm").write_bytes(b"a container soundfile does not read")
    np.testing.assert_array_equal(read_audio_file(tmp_path / "speech.webm"), np.full(800, 0.25, dtype=np.float32))


def test_the_model_does_not_import_its_pipeline_and_folder_savers_ship_it(tmp_path):
    """`save_pretrained` copies the model file and its relative imports, which leave out the pipeline;
    `ship_pipeline` (run by every command that saves a folder) adds it, and leaves other folders alone."""
    from transformers.dynamic_module_utils import get_relative_import_files

    imported = sorted(Path(path).name for path in get_relative_import_files(ROOT / "modeling_armhubert.py"))
    assert imported == ["attention_armhubert.py", "configuration_armhubert.py", "ops_armhubert.py"]
    model = random_model(tiny_config())
    model.save_pretrained(tmp_path / "plain")
    assert sorted(path.name for path in (tmp_path / "plain").glob("*.py")) == [
        "attention_armhubert.py",
        "configuration_armhubert.py",
        "modeling_armhubert.py",
        "ops_armhubert.py",
    ]
    ship_pipeline(tmp_path / "plain")
    assert (tmp_path / "plain" / "pipeline_armhubert.py").read_bytes() == (ROOT / "pipeline_armhubert.py").read_bytes()
    (tmp_path / "other").mkdir()
    ship_pipeline(tmp_path / "other")  # no model code here (e.g. a plain HuBERT folder): nothing to ship beside it
    assert not any((tmp_path / "other").iterdir())
