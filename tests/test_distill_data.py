"""The shared LibriSpeech data API: armhubert.speech.librispeech.load_librispeech, armhubert.speech.audio.read_audio, DataError."""

import shutil

import numpy as np
import pytest
import soundfile
from helpers import ROOT

from armhubert.speech.audio import DataError, read_audio
from armhubert.speech.librispeech import load_librispeech

CORPUS = ROOT / "data" / "LibriSpeech"


def test_load_local_split_columns_and_content():
    dataset = load_librispeech(ROOT / "data", "dev-clean")
    assert len(dataset) == 12
    assert set(dataset.column_names) == {"id", "audio", "text", "speaker_id", "num_samples"}
    row = dataset[0]
    assert row["id"] == "1001-201-0000"
    assert row["speaker_id"] == 1001
    transcript = (CORPUS / "dev-clean/1001/201/1001-201.trans.txt").read_text().splitlines()[0]
    assert row["text"] == transcript.split(" ", 1)[1]
    samples = read_audio(row["audio"])
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) == row["num_samples"] == soundfile.info(row["audio"]["path"]).frames
    assert sorted(set(dataset["speaker_id"])) == [1001, 1002, 1003, 1004]


def test_load_accepts_the_librispeech_folder_and_concatenates_splits():
    both = load_librispeech(CORPUS, ["dev-clean", "test-clean"])
    assert len(both) == 12 + 8
    assert both[0]["id"].startswith("1001-201") and both[12]["id"].startswith("1001-301")


def test_max_duration_drops_long_utterances():
    full = load_librispeech(CORPUS, "dev-clean")
    limit = float(np.median(full["num_samples"])) / 16000
    short = load_librispeech(CORPUS, "dev-clean", max_duration=limit)
    assert 0 < len(short) < len(full)
    assert max(short["num_samples"]) <= limit * 16000


def test_missing_root_and_split_name_the_expected_layout(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*LibriSpeech/<split>/<speaker>/<chapter>"):
        load_librispeech(tmp_path / "nowhere", "dev-clean")
    (tmp_path / "LibriSpeech" / "dev-clean").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no split folder 'train-clean-100'.*found LibriSpeech/"):
        load_librispeech(tmp_path, "train-clean-100")


def test_wrong_layout_and_malformed_transcripts(tmp_path):
    flat = tmp_path / "LibriSpeech" / "dev-clean"
    flat.mkdir(parents=True)
    shutil.copy(CORPUS / "dev-clean/1001/201/1001-201-0000.flac", flat)  # flac files without speaker/chapter folders
    with pytest.raises(DataError, match=r"no <speaker>/<chapter>/.*trans.txt.*found 1001-201-0000.flac"):
        load_librispeech(tmp_path, "dev-clean")

    chapter = flat / "1001" / "201"
    chapter.mkdir(parents=True)
    (chapter / "1001-201.trans.txt").write_text("not-an-id HELLO\n")
    with pytest.raises(DataError, match=r"trans.txt:1: expected 'SPEAKER-CHAPTER-UTT TRANSCRIPT'"):
        load_librispeech(tmp_path, "dev-clean")
    (chapter / "1001-201.trans.txt").write_text("1001-201-0007 HELLO\n")
    with pytest.raises(DataError, match=r"1 utterance\(s\).*no audio file.*1001-201-0007.flac"):
        load_librispeech(tmp_path, "dev-clean")


def test_unreadable_files_are_skipped_with_a_warning(tmp_path, caplog):
    shutil.copytree(CORPUS / "dev-clean", tmp_path / "LibriSpeech" / "dev-clean")
    broken = tmp_path / "LibriSpeech/dev-clean/1002/202/1002-202-0001.flac"
    broken.write_bytes(b"not audio at all")
    with caplog.at_level("WARNING", logger="armhubert.speech.librispeech"):
        dataset = load_librispeech(tmp_path, "dev-clean")
    assert len(dataset) == 11 and "1002-202-0001" not in dataset["id"]
    assert "Skipping 1 unreadable audio file(s)" in caplog.text and "1002-202-0001.flac" in caplog.text
    for path in (tmp_path / "LibriSpeech/dev-clean").rglob("*.flac"):
        path.write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 12 audio files"):
        load_librispeech(tmp_path, "dev-clean")


def test_read_audio_bytes_resampling_stereo_and_errors(tmp_path):
    rate = 8000
    t = np.arange(rate) / rate
    left, right = np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    from_path = read_audio(str(path))
    from_bytes = read_audio({"bytes": path.read_bytes(), "path": None})
    assert from_path.dtype == np.float32 and len(from_path) == 16000
    np.testing.assert_array_equal(from_path, from_bytes)
    # Averaged channels: amplitude 0.75 of a 440 Hz sine survives resampling.
    assert abs(np.abs(from_path[1000:-1000]).max() - 0.75) < 0.02
    assert len(read_audio(str(path), target_rate=rate)) == rate

    (tmp_path / "bad.flac").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"cannot read audio file .*bad.flac"):
        read_audio({"path": str(tmp_path / "bad.flac"), "bytes": None})
    with pytest.raises(DataError, match="cannot read audio file .*missing.flac"):
        read_audio(tmp_path / "missing.flac")


def test_hub_source_maps_split_names_and_reads_headers_from_bytes(monkeypatch):
    import datasets

    calls = []
    flac = (CORPUS / "dev-clean/1001/201/1001-201-0000.flac").read_bytes()

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        # The Hub copy's columns; audio stored as FLAC bytes (undecodable bytes for one row).
        return datasets.Dataset.from_dict(
            {
                "file": ["a.flac", "b.flac"],
                "audio": [{"bytes": flac, "path": "a.flac"}, {"bytes": b"junk", "path": "b.flac"}],
                "text": ["HELLO", "WORLD"],
                "speaker_id": [7, 8],
                "chapter_id": [1, 2],
                "id": ["7-1-0000", "8-2-0000"],
            }
        ).cast_column("audio", datasets.Audio(sampling_rate=16000))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset = load_librispeech("openslr/librispeech_asr", ["train-clean-100", "dev-clean", "train-other-500"])
    assert calls == [
        ("openslr/librispeech_asr", "clean", "train.100"),
        ("openslr/librispeech_asr", "clean", "validation"),
        ("openslr/librispeech_asr", "other", "train.500"),
    ]
    assert set(dataset.column_names) == {"id", "audio", "text", "speaker_id", "num_samples"}
    assert dataset["id"] == ["7-1-0000"] * 3  # the unreadable row is skipped in every split
    row = dataset[0]
    assert row["num_samples"] == soundfile.info(CORPUS / "dev-clean/1001/201/1001-201-0000.flac").frames
    assert len(read_audio(row["audio"])) == row["num_samples"]
    with pytest.raises(DataError, match="unknown LibriSpeech split 'train-clean-960'"):
        load_librispeech("openslr/librispeech_asr", "train-clean-960")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openslr/librispeech_asr' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        DataError, match=r"could not load openslr/librispeech_asr \(clean/validation\) from the Hugging Face Hub"
    ):
        load_librispeech("openslr/librispeech_asr", "dev-clean")


def test_distillation_crops_are_fixed_per_utterance():
    """The same utterance gets the same window every epoch (resumable runs); utterances differ; short ones stay whole."""
    from armhubert.speech.librispeech import _audio_duration_crop

    samples = np.arange(10_000, dtype=np.float32)
    first = _audio_duration_crop(samples, 4000, "1001-101-0000")
    assert len(first) == 4000 and np.array_equal(first, _audio_duration_crop(samples, 4000, "1001-101-0000"))
    offsets = {int(_audio_duration_crop(samples, 4000, f"1001-101-{i:04d}")[0]) for i in range(20)}
    assert len(offsets) > 10 and max(offsets) <= 6000
    assert np.array_equal(_audio_duration_crop(samples[:3000], 4000, "x"), samples[:3000])
    assert np.array_equal(_audio_duration_crop(samples, None, "x"), samples)
