"""Cards of trained models say what the run really was: data (the bundled corpus is synthetic), metrics, teacher."""

from helpers import ROOT
from huggingface_hub import ModelCard

from armhubert.folders.cards import classification_card, ctc_card, describe_data, format_duration
from distill_trainer import run

QUICKSTART = str(ROOT / "conf" / "quickstart.yaml")
FAST = ["crop_seconds=0.5", "dataloader_num_workers=0", "report_to=none", "disable_tqdm=true"]


def card(text):
    return ModelCard(text)


def test_ctc_card_on_the_bundled_corpus_says_synthetic_and_has_metadata(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "converted" / "armhubert-960h").mkdir(parents=True)  # the local encoder fine-tuned from
    text = ctc_card(
        "out/ctc",
        "converted/armhubert-960h",
        None,
        str(ROOT / "data" / "LibriSpeech"),
        "train-clean-100",
        "dev-clean",
        40,
        {"eval_wer": 0.5, "eval_cer": 0.25},
        30,
    )
    parsed = card(text)
    assert parsed.data.pipeline_tag == "automatic-speech-recognition" and parsed.data.library_name == "transformers"
    assert parsed.data.datasets is None  # not librispeech_asr: the data was not LibriSpeech
    results = {result.metric_type: result.metric_value for result in parsed.data.eval_results}
    assert results == {"wer": 0.5, "cer": 0.25}
    assert (
        "synthetic corpus (espeak-ng speech in LibriSpeech layout" in parsed.text and "not LibriSpeech" in parsed.text
    )
    assert "on LibriSpeech train-clean-100" not in parsed.text
    assert "`converted/armhubert-960h`" in parsed.text and "WER 50.00 %" in parsed.text
    assert parsed.data.base_model is None  # a local folder is no Hub id

    hub = card(
        ctc_card(
            "out/x",
            "me/encoder",
            None,
            "openslr/librispeech_asr",
            "train-clean-100",
            "dev-clean",
            9,
            {"eval_wer": 0.1, "eval_cer": 0.05},
            3,
        )
    )
    assert hub.data.datasets == ["openslr/librispeech_asr"] and hub.data.base_model == "me/encoder"
    assert describe_data(ROOT / "data")[1] == [] and "synthetic" in describe_data(ROOT / "data")[0]


def test_classification_card_metadata():
    parsed = card(
        classification_card(
            "out/sid",
            None,
            "armhubert-s-100h",
            "data/LibriSpeech/train-clean-100",
            "data/LibriSpeech/dev-clean",
            ["1001", "1002"],
            40,
            {"eval_accuracy": 0.9},
            12,
        )
    )
    assert parsed.data.pipeline_tag == "audio-classification"
    assert [(r.metric_type, r.metric_value) for r in parsed.data.eval_results] == [("accuracy", 0.9)]
    assert "random `armhubert-s-100h`" in parsed.text and "synthetic corpus" in parsed.text
    assert 'pipeline(model="out/sid", trust_remote_code=True)' in parsed.text
    assert (
        parsed.data.eval_results[0].dataset_name == "data/LibriSpeech/train-clean-100" and "windows" not in parsed.text
    )
    cropped = card(
        classification_card(
            "out/sid",
            "runs/quickstart",
            None,
            "data/LibriSpeech/train-clean-100",
            "data/LibriSpeech/dev-clean",
            ["1001", "1002"],
            40,
            {"eval_accuracy": 1.0},
            2000,
            1.5,
        )
    )
    assert "(40 utterances, 2 classes, trained on random 1.5 s windows; evaluated on" in cropped.text


def test_durations_of_small_corpora_are_not_zero_hours():
    assert format_duration(95) == "1.6 min" and format_duration(12) == "12 s" and format_duration(7200) == "2.0 h"


def test_a_distilled_student_gets_a_card_and_the_run_says_where_it_is(tmp_path, capsys):
    out = tmp_path / "student"
    trainer = run(
        [
            "--config",
            QUICKSTART,
            f"output_dir={out}",
            f"data_source={ROOT / 'data'}",
            "max_steps=2",
            "logging_steps=1",
            "eval_strategy=no",
            "save_strategy=no",
            *FAST,
        ]
    )
    parameters = sum(p.numel() for p in trainer.model.parameters())
    assert parameters < 1_000_000  # the quickstart student is tiny, whatever its layout's name
    assert f"saved the student ({parameters:,} parameters) to {out}" in capsys.readouterr().out
    parsed = ModelCard.load(out / "README.md")
    assert parsed.data.library_name == "transformers" and parsed.data.datasets is None
    text = parsed.text
    assert f"A {parameters:,}-parameter ARMHubert-family student distilled from `random-hubert`" in text
    assert "`masking` recipe" in text and "| training steps | 2 |" in text
    assert "synthetic corpus" in text and "train-clean-100: 40 utterances," in text and " h)" not in text
    assert "final training loss:" in text
