"""Fine-tuning: the shared set-up (`armhubert.training.finetune`), the CTC and classification recipes on the
bundled corpus, and the SUPERB upstream expert."""

import csv
import shlex
import shutil
from dataclasses import dataclass

import datasets
import numpy as np
import pytest
import torch
from helpers import ROOT, load_script, random_model, tiny_config
from safetensors.torch import load_file
from transformers import pipeline

from armhubert.cli import UserError
from armhubert.resources import BUNDLED_CORPUS
from armhubert.speech.audio import DataError, load_16k
from armhubert.training.finetune import (
    ModelArguments,
    check_min_duration,
    decode_audio_batch,
    load_head_model,
    parse_run_arguments,
    random_window,
)
from modeling_armhubert import ARMHubertForCTC
from pipeline_armhubert import release_feature_extractor

finetune_classification = load_script("finetune_classification")
finetune_ctc = load_script("finetune_ctc")
superb_upstream = load_script("superb_upstream")
make_corpus = load_script("make_corpus")

CORPUS = BUNDLED_CORPUS
STAR = dict(layer_reuses_attention_map=[False] * 4, projection_head_size=None, use_mask_embedding=False)
QUIET = ["--use_cpu", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0"]


def training_losses(result):
    return [entry["loss"] for entry in result["log_history"] if "loss" in entry]


def test_ctc_finetuning_lowers_the_loss_and_writes_a_usable_model(tiny_model_dir, tmp_path):
    out = tmp_path / "ctc"
    result = finetune_ctc.run(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--output_dir",
            str(out),
            "--max_train_samples",
            "8",
            "--max_eval_samples",
            "4",
            "--per_device_train_batch_size",
            "4",
            "--per_device_eval_batch_size",
            "4",
            "--max_steps",
            "30",
            "--learning_rate",
            "2e-3",
            "--warmup_steps",
            "3",
            "--logging_steps",
            "1",
            *QUIET,
        ]
    )
    losses = training_losses(result)
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert 0 <= result["eval"]["eval_wer"] <= 1.5 and 0 <= result["eval"]["eval_cer"] <= 1.5

    card = (out / "README.md").read_text()
    assert f"WER {100 * result['eval']['eval_wer']:.2f} %" in card and "dev-clean" in card
    vocab = (out / "vocab.json").read_text()
    assert '"[PAD]": 0' in vocab and '"|"' in vocab
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
    asr = pipeline("automatic-speech-recognition", model=str(out), trust_remote_code=True)
    text = asr(load_16k(CORPUS / "dev-clean" / "1002" / "202" / "1002-202-0000.flac"))["text"]
    assert isinstance(text, str) and set(text) <= set(vocab)


DIGITS_CORPUS = ROOT / "data" / "digits" / "LibriSpeech"


def transcripts(split_folder):
    """{utterance id: transcript} of a LibriSpeech-layout split."""
    lines = [line for path in split_folder.rglob("*.trans.txt") for line in path.read_text().splitlines()]
    return dict(line.split(" ", 1) for line in lines)


def test_bundled_digits_corpus_is_the_one_make_corpus_plans_and_evaluates_on_new_sequences():
    """The CTC demo's corpus: what `make_corpus.py --corpus digits --seed 0` writes, every evaluation sequence new."""
    planned = {
        split: {f"{speaker.speaker_id}-{chapter}-{utt:04d}": text for _, speaker, chapter, utt, text, _, _ in plan}
        for split, plan in (
            (name, [row for row in make_corpus.plan_digit_utterances(0) if row[0] == name])
            for name, _, _ in make_corpus.DIGIT_SPLITS
        )
    }
    bundled = {split: transcripts(DIGITS_CORPUS / split) for split in planned}
    assert bundled == planned
    assert [len(bundled[split]) for split in ("train-clean-100", "dev-clean", "test-clean")] == [120, 40, 20]
    assert all(len(list((DIGITS_CORPUS / split).rglob("*.flac"))) == len(bundled[split]) for split in bundled)
    words = [word for text in bundled["train-clean-100"].values() for word in text.split()]
    assert set(words) == set(make_corpus.DIGITS) and len(words) > 400  # each word heard about 47 times in training
    training = set(bundled["train-clean-100"].values())
    assert not training & set(bundled["dev-clean"].values()) and not training & set(bundled["test-clean"].values())


def demo_arguments(page):
    """The arguments of the CTC demo command on a documentation page (its finetune_ctc.py line from runs/quickstart)."""
    text = page.read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if "scripts/finetune_ctc.py" in line and "runs/quickstart" in line]
    assert len(lines) == 1, (page, lines)
    words = shlex.split(lines[0])
    return words[words.index("scripts/finetune_ctc.py") + 1 :]


def replace_option(arguments, option, value):
    index = arguments.index(option)
    return [*arguments[: index + 1], value, *arguments[index + 2 :]]


def test_ctc_demo_command_trains_on_the_digits_and_leaves_what_the_docs_promise(tiny_model_dir, tmp_path):
    """The documented demo, cut to 60 steps from the tiny encoder: the digits vocabulary, a falling loss, an
    evaluation curve of several points, a card and loss.png (the full run is measured in docs/finetuning.md)."""
    arguments = demo_arguments(ROOT / "README.md")
    assert arguments == demo_arguments(ROOT / "docs" / "finetuning.md")
    out = tmp_path / "ctc"
    for option, value in (
        ("--model_name_or_path", str(tiny_model_dir)),
        ("--output_dir", str(out)),
        ("--max_steps", "60"),
        ("--eval_steps", "20"),
        ("--logging_steps", "5"),
    ):
        arguments = replace_option(arguments, option, value)
    result = finetune_ctc.run([*arguments, "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"])

    letters = {char for word in make_corpus.DIGITS for char in word}
    assert set(finetune_ctc.json.loads((out / "vocab.json").read_text())) == {"[PAD]", "[UNK]", "|", *letters}
    losses = training_losses(result)
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses
    evaluations = [entry for entry in result["log_history"] if "eval_wer" in entry]
    assert [entry["step"] for entry in evaluations] == [20, 40, 60]  # a curve, not a single point
    assert all(0 <= entry["eval_wer"] <= 1.5 and 0 <= entry["eval_cer"] <= 1.5 for entry in evaluations)
    card = (out / "README.md").read_text()
    assert "data/digits/LibriSpeech" in card and f"WER {100 * result['eval']['eval_wer']:.2f} %" in card
    assert (out / "loss.png").stat().st_size > 10_000


def test_ctc_evaluation_in_training_gives_the_figures_evaluate_py_gives(tiny_model_dir, tmp_path):
    """Frames past an utterance's end in a padded evaluation batch are not decoded: an untrained head writes
    characters on every frame, padding included, so the figures would differ if they were."""
    out = tmp_path / "ctc"
    result = finetune_ctc.run(
        [
            *("--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out)),
            *("--data_source", str(DIGITS_CORPUS), "--max_train_samples", "8", "--max_steps", "1"),
            *("--learning_rate", "1e-6", *QUIET),
        ]
    )
    assert 0.3 < result["eval"]["eval_cer"] < 10  # it writes characters: the padding would add many
    report = tmp_path / "evaluate.json"
    evaluate = load_script("evaluate")
    assert (
        evaluate.main([str(out), "--data", str(DIGITS_CORPUS), "--split", "dev-clean", "--output_json", str(report)])
        == 0
    )
    figures = finetune_ctc.json.loads(report.read_text())
    assert figures["wer"] == pytest.approx(result["eval"]["eval_wer"]), (figures, result["eval"])
    assert figures["cer"] == pytest.approx(result["eval"]["eval_cer"]), (figures, result["eval"])


def copy_of_corpus(tmp_path, splits=("train-clean-100", "dev-clean")):
    root = tmp_path / "LibriSpeech"
    for split in splits:
        shutil.copytree(CORPUS / split, root / split)
    return root


def test_ctc_cli_errors_are_one_line_with_status_2(tiny_model_dir, tmp_path, capsys):
    corpus = copy_of_corpus(tmp_path)
    transcript = corpus / "dev-clean" / "1001" / "201" / "1001-201.trans.txt"
    lines = transcript.read_text().splitlines()
    first_id = lines[0].split(" ", 1)[0]
    lines[0] = f"{first_id} CAFÉ 42"
    transcript.write_text("\n".join(lines) + "\n")
    common = ["--output_dir", str(tmp_path / "out"), *QUIET]
    cases = [
        (
            ["--model_name_or_path", str(tiny_model_dir), "--data_source", str(corpus)],
            f"transcript of {first_id} uses characters",
        ),
        (["--model_name_or_path", str(tiny_model_dir), "--data_source", str(tmp_path / "nowhere")], "does not exist"),
        (["--data_source", str(CORPUS)], "no model given"),
        (["--model_name_or_path", str(tmp_path / "no-model"), "--data_source", str(CORPUS)], "cannot load the model"),
    ]
    for arguments, message in cases:
        assert finetune_ctc.main(arguments + common) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert error[-1].startswith("finetune_ctc.py: error:") and message in error[-1], error
    assert not (tmp_path / "out").exists()


def test_classification_from_label_folders_writes_a_model_the_pipeline_serves(tiny_model_dir, tmp_path):
    out = tmp_path / "sid"
    result = finetune_classification.run(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--output_dir",
            str(out),
            "--train_dir",
            str(CORPUS / "train-clean-100"),
            "--eval_dir",
            str(CORPUS / "dev-clean"),
            "--use_weighted_layer_sum",
            "true",
            "--per_device_train_batch_size",
            "8",
            "--max_steps",
            "3",
            *QUIET,
        ]
    )
    assert 0 <= result["eval"]["eval_accuracy"] <= 1
    assert f"accuracy {100 * result['eval']['eval_accuracy']:.2f} %" in (out / "README.md").read_text()
    classify = pipeline("audio-classification", model=str(out), trust_remote_code=True)
    scores = classify(load_16k(CORPUS / "test-clean" / "1003" / "303" / "1003-303-0000.flac"), top_k=4)
    assert sorted(entry["label"] for entry in scores) == ["1001", "1002", "1003", "1004"]  # speaker folders
    assert abs(sum(entry["score"] for entry in scores) - 1) < 1e-5


def test_classification_fits_two_speakers_from_a_csv_with_relative_paths(tiny_model_dir, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    rows = []
    for speaker in ("1001", "1002"):
        for path in sorted((CORPUS / "train-clean-100" / speaker).rglob("*.flac"))[:4]:
            shutil.copy(path, clips / path.name)
            rows.append((f"clips/{path.name}", speaker))
    table = tmp_path / "clips.csv"
    with open(table, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    result = finetune_classification.run(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--output_dir",
            str(tmp_path / "out"),
            "--train_csv",
            str(table),
            "--eval_csv",
            str(table),
            "--freeze_feature_encoder",
            "false",
            "--per_device_train_batch_size",
            "8",
            "--max_steps",
            "12",
            "--learning_rate",
            "3e-3",
            "--logging_steps",
            "1",
            *QUIET,
        ]
    )
    losses = training_losses(result)
    # Chance is ln 2 = 0.69: the model must fit its 8 training clips well within 12 steps.
    assert losses[0] > 0.6 and result["eval"]["eval_loss"] < 0.35, (losses, result["eval"])
    assert result["eval"]["eval_accuracy"] >= 0.9


def test_random_windows_cover_the_utterance_and_change_every_draw():
    samples = np.arange(1000, dtype=np.float32)
    generator = torch.Generator().manual_seed(0)
    windows = [random_window(samples, 300, generator) for _ in range(200)]
    assert all(
        len(window) == 300 and np.array_equal(window, samples[int(window[0]) : int(window[0]) + 300])
        for window in windows
    )
    offsets = {int(window[0]) for window in windows}
    assert len(offsets) > 100 and min(offsets) < 50 and max(offsets) > 650  # uniform over 0..700
    assert np.array_equal(random_window(samples[:200], 300, generator), samples[:200])  # shorter: kept whole


def test_classification_crops_training_rows_only_with_repeatable_windows():
    files = sorted((CORPUS / "dev-clean").rglob("*.flac"))[:2]
    rows = [
        {"audio": {"bytes": None, "path": str(path)}, "label": 0, "random_crop": crop}
        for path, crop in zip(files, (True, False))
    ]
    collator = finetune_classification.ClassificationCollator(release_feature_extractor(), crop_samples=8000)

    def draw():
        batch = collator(rows)
        return batch["attention_mask"].sum(dim=1).tolist(), batch["input_values"][0, :8000].clone()

    torch.manual_seed(3)
    lengths, first = draw()
    assert lengths == [8000, len(load_16k(files[1]))]  # the evaluation-style row keeps its whole length
    _, second = draw()
    assert not torch.equal(first, second)  # a new window every time
    torch.manual_seed(3)
    assert torch.equal(draw()[1], first)  # the same windows under the same seed


def test_classification_refuses_crop_windows_it_cannot_use(tiny_model_dir, tmp_path, capsys):
    common = [
        "--model_name_or_path",
        str(tiny_model_dir),
        "--output_dir",
        str(tmp_path / "out"),
        "--train_dir",
        str(CORPUS / "train-clean-100"),
        "--eval_dir",
        str(CORPUS / "dev-clean"),
        *QUIET,
    ]
    for value, message in (
        (
            "0.01",
            "--crop_seconds 0.01 is shorter than the receptive field (400 samples, 0.025 s); give a longer window",
        ),
        ("nan", "--crop_seconds must be a finite number > 0, got nan"),
        ("-1", "--crop_seconds must be a finite number > 0, got -1.0"),
    ):
        assert finetune_classification.main([*common, "--crop_seconds", value]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert error[-1].startswith("finetune_classification.py: error: --crop_seconds") and message in error[-1], error
    assert not (tmp_path / "out").exists()


def test_classification_csv_errors_are_one_line_with_status_2(tiny_model_dir, tmp_path, capsys):
    files = sorted((CORPUS / "dev-clean").rglob("*.flac"))
    train_csv, eval_csv, bad_csv = tmp_path / "train.csv", tmp_path / "eval.csv", tmp_path / "bad.csv"
    with open(train_csv, "w", newline="") as handle:
        csv.writer(handle).writerows(
            [("path", "label"), *((path, "even" if i % 2 else "odd") for i, path in enumerate(files))]
        )
    with open(eval_csv, "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label"], [files[0], "odd"], [files[1], "other"]])
    bad_csv.write_text("file,class\nx.flac,a\n")
    missing_csv = tmp_path / "missing.csv"
    missing_csv.write_text(f"path,label\n{files[0]},odd\n{tmp_path / 'gone.flac'},even\n")
    common = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "out"), *QUIET]
    cases = [
        (["--train_csv", str(train_csv), "--eval_csv", str(eval_csv)], "labels the training data does not: other"),
        (["--train_csv", str(bad_csv), "--eval_csv", str(eval_csv)], "needs a header with 'path' and 'label'"),
        (["--train_csv", str(missing_csv), "--eval_csv", str(eval_csv)], "cannot read audio file"),
        (["--train_csv", str(train_csv)], "give exactly one of --eval_dir and --eval_csv"),
        (
            ["--train_csv", str(train_csv), "--train_dir", str(CORPUS / "dev-clean"), "--eval_csv", str(eval_csv)],
            "give exactly one of --train_dir and --train_csv",
        ),
    ]
    for arguments, message in cases:
        assert finetune_classification.main(arguments + common) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert error[-1].startswith("finetune_classification.py: error:") and message in error[-1], error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", ["arm", "star"])
def test_superb_upstream_returns_what_the_release_returned(tmp_path, family, capsys):
    model = random_model(tiny_config(**(STAR if family == "star" else {})))
    model.save_pretrained(tmp_path)
    expert = superb_upstream.armhubert_local(str(tmp_path))
    wavs = [torch.randn(16000) * 0.1, torch.randn(9000) * 0.1]
    with torch.no_grad():
        features = expert(wavs)
        alone = model(wavs[0][None], output_hidden_states=True)
    expected = alone.projected_hidden_states if family == "arm" else alone.hidden_states[1:]
    assert expert.get_downsample_rates("hidden_states") == 320
    assert len(features["hidden_states"]) == 4
    assert features["hidden_states"][0].shape == (2, 49, 64 if family == "arm" else 48)
    for got, want in zip(features["hidden_states"], expected):
        torch.testing.assert_close(got[:1], want)  # the unpadded row equals its own run
    torch.testing.assert_close(features["last_hidden_state"][:1], alone.last_hidden_state)
    torch.testing.assert_close(features["last_hidden_state"], features["hidden_states"][-1])

    assert superb_upstream.main(["--check", str(tmp_path)]) == 0
    assert "hidden_states: 4 x (2, 74" in capsys.readouterr().out
    assert superb_upstream.main(["--check", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("superb_upstream.py: error: cannot load the model")
    assert superb_upstream.main(["--check"]) == 2
    assert "--check takes one argument" in capsys.readouterr().err


@dataclass
class NoDataArguments:
    pass


def test_run_arguments_and_model_choice_are_checked_before_any_data_is_read(tmp_path):
    out = ["--output_dir", str(tmp_path / "out")]
    cases = [
        ([*QUIET, "--preset", "armhubert-960h"], "--output_dir is required"),
        ([*QUIET, *out], "no model given"),
        (
            [*QUIET, *out, "--preset", "armhubert-960h", "--model_name_or_path", "x"],
            "either --model_name_or_path or --preset",
        ),
        (
            [*QUIET, *out, "--preset", "p", "--eval_strategy", "epoch", "--load_best_model_at_end", "true"],
            "strategy to match",
        ),
        (
            [*QUIET, *out, "--preset", "p", "--max_steps", "0"],
            r"max_steps must be -1 \(use num_train_epochs\) or a positive number of steps, got 0",
        ),
        ([*QUIET, *out, "--preset", "p", "--num_train_epochs", "0"], "num_train_epochs is 0 and max_steps is not set"),
    ]
    for argv, message in cases:
        with pytest.raises(UserError, match=message):
            parse_run_arguments(NoDataArguments, argv, "test")
    model_args, _, training_args = parse_run_arguments(
        NoDataArguments, [*QUIET, *out, "--preset", "armhubert-960h"], "test"
    )
    assert training_args.remove_unused_columns is False and training_args.length_column_name == "num_samples"

    with pytest.raises(UserError, match="no model given: pass --model_name_or_path"):
        ModelArguments()  # a Python caller's arguments are checked as the command line's
    with pytest.raises(UserError, match="cannot load the model .*no-model"):
        load_head_model(ARMHubertForCTC, ModelArguments(model_name_or_path=str(tmp_path / "no-model")))
    with pytest.raises(UserError, match="no-such-preset"):
        load_head_model(ARMHubertForCTC, ModelArguments(preset="no-such-preset"))


def test_head_model_from_a_saved_encoder_takes_the_head_and_training_settings(tiny_model_dir):
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), freeze_base_model=True, mask_time_prob=0.2)
    model = load_head_model(ARMHubertForCTC, model_args, vocab_size=7)
    assert model.lm_head.out_features == 7
    assert model.config.mask_time_prob == 0.2 and model.config.layer_grad_scale is False
    trainable = {name.split(".")[0] for name, param in model.named_parameters() if param.requires_grad}
    assert trainable == {"lm_head"}  # frozen base model: only the head trains


def test_audio_batches_are_padded_and_short_utterances_are_refused(tmp_path):
    files = sorted((CORPUS / "dev-clean").rglob("*.flac"))[:2]
    rows = [{"id": path.stem, "audio": {"bytes": None, "path": str(path)}} for path in files]
    batch = decode_audio_batch(rows, release_feature_extractor())
    lengths = [len(load_16k(path)) for path in files]
    assert tuple(batch["input_values"].shape) == (2, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths

    (tmp_path / "broken.flac").write_bytes(b"not audio")
    with pytest.raises(DataError, match="cannot read audio file .*broken.flac"):
        decode_audio_batch(
            [{"id": "x", "audio": {"bytes": None, "path": str(tmp_path / "broken.flac")}}], release_feature_extractor()
        )

    dataset = datasets.Dataset.from_dict(
        {"id": ["long", "short"], "num_samples": [16000, 399], "audio": [{"path": "a"}, {"path": "b"}]}
    )
    with pytest.raises(
        DataError, match=r"1 training utterance\(s\) are shorter than 400 samples \(25 ms\), e.g. short"
    ):
        check_min_duration(dataset, tiny_config(), "training")
    check_min_duration(dataset.select([0]), tiny_config(), "training")


def test_demo_runs_keep_one_small_checkpoint_unless_asked(tiny_model_dir, tmp_path):
    """Fine-tuning checkpoints default to the last one only, without optimizer state (a demo leaves MBs, not GBs)."""
    common = [
        "--model_name_or_path",
        str(tiny_model_dir),
        "--train_dir",
        str(CORPUS / "train-clean-100"),
        "--eval_dir",
        str(CORPUS / "dev-clean"),
        "--per_device_train_batch_size",
        "8",
        "--max_steps",
        "3",
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--save_steps",
        "1",
    ]
    finetune_classification.run([*common, "--output_dir", str(tmp_path / "small")])
    checkpoints = sorted((tmp_path / "small").glob("checkpoint-*"))
    assert [path.name for path in checkpoints] == ["checkpoint-3"]
    assert (checkpoints[0] / "model.safetensors").is_file() and not (checkpoints[0] / "optimizer.pt").exists()
    finetune_classification.run(
        [*common, "--output_dir", str(tmp_path / "full"), "--save_only_model", "false", "--save_total_limit", "2"]
    )
    checkpoints = sorted((tmp_path / "full").glob("checkpoint-*"))
    assert [path.name for path in checkpoints] == ["checkpoint-2", "checkpoint-3"]
    assert (checkpoints[-1] / "optimizer.pt").is_file()

    # --resume_from_checkpoint continues that run in its own output_dir: from its last step (3) to max_steps 3 is
    # no step at all, so the saved model is checkpoint-3's (a run from scratch at this rate would not be).
    resumed = [*common, "--output_dir", str(tmp_path / "full"), "--learning_rate", "0.5"]
    last = load_file(checkpoints[-1] / "model.safetensors")
    finetune_classification.run([*resumed, "--resume_from_checkpoint", str(checkpoints[-1])])
    final = load_file(tmp_path / "full" / "model.safetensors")
    assert all(torch.equal(final[name], last[name]) for name in last)
    # The resumed run's rotation (the default limit, 1) counts the checkpoints it resumed as its own.
    assert [path.name for path in (tmp_path / "full").glob("checkpoint-*")] == ["checkpoint-4"]
    with pytest.raises(UserError, match="--resume_from_checkpoint .*: not a complete checkpoint folder"):
        finetune_classification.run([*resumed, "--resume_from_checkpoint", str(tmp_path / "small")])
    # A truncated trainer state is refused in one line before the Trainer reads it (it was a JSON traceback).
    state = checkpoints[-1].parent / "checkpoint-4" / "trainer_state.json"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(UserError, match="trainer_state.json is not valid JSON"):
        finetune_classification.run([*resumed, "--resume_from_checkpoint", "last"])


def test_a_resume_checkpoint_whose_optimizer_is_not_a_torch_file_is_one_line_and_changes_nothing(
    tiny_model_dir, tmp_path, capsys
):
    """Resuming fine-tuning checks the checkpoint's weights and pickles as distillation does (it was a traceback)."""
    from hostile import digest, refusal

    out = tmp_path / "out"
    common = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--train_dir"]
    common += [str(CORPUS / "train-clean-100"), "--eval_dir", str(CORPUS / "dev-clean"), "--use_cpu"]
    common += ["--report_to", "none", "--disable_tqdm", "true", "--save_steps", "1", "--save_only_model", "false"]
    finetune_classification.run([*common, "--max_steps", "2"])
    checkpoint = out / "checkpoint-2"
    (checkpoint / "optimizer.pt").write_bytes(np.random.default_rng(0).bytes(5000))
    before = digest(tmp_path)
    capsys.readouterr()
    line = refusal(
        capsys, finetune_classification.main, *common, "--max_steps", "3", "--resume_from_checkpoint", "last"
    )
    assert f"--resume_from_checkpoint: {checkpoint / 'optimizer.pt'} is not a readable PyTorch checkpoint" in line, line
    assert digest(tmp_path) == before


def test_final_evaluation_reuses_the_evaluation_logged_at_the_last_step():
    from types import SimpleNamespace

    from armhubert.training.finetune import final_evaluation

    calls = []
    logged = {"eval_loss": 1.5, "eval_wer": 0.5, "epoch": 2.0, "step": 30}
    trainer = SimpleNamespace(
        state=SimpleNamespace(global_step=30, log_history=[{"loss": 2.0, "step": 30}, logged]),
        evaluate=lambda: calls.append(1) or {"eval_loss": 9.0},
    )
    assert final_evaluation(trainer) == {"eval_loss": 1.5, "eval_wer": 0.5, "epoch": 2.0} and not calls
    trainer.state.log_history[-1] = {**logged, "step": 20}  # last evaluated before the end: evaluate again
    assert final_evaluation(trainer) == {"eval_loss": 9.0} and calls == [1]
