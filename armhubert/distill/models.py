"""The teacher and the student of a distillation run, and the checks that they fit together."""

import functools
import inspect
from collections.abc import Mapping
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    AutoModel,
    Data2VecAudioConfig,
    HubertConfig,
    PretrainedConfig,
    PreTrainedModel,
    UniSpeechSatConfig,
    Wav2Vec2BertConfig,
    Wav2Vec2Config,
    Wav2Vec2ConformerConfig,
    WavLMConfig,
    WhisperConfig,
)

from configuration_armhubert import PRESETS, ARMHubertConfig
from modeling_armhubert import ARMHubertModel

from ..cli import UserError, first_line, refuse_broken
from ..files.weights import check_model_size
from ..folders.remote_code import add_remote_code_entries
from ..teachers.ctranslate2 import is_ctranslate2_whisper, whisper_from_ctranslate2
from ..teachers.encoders import TeacherEncoder, Wav2Vec2StyleTeacher, teacher_encoder
from ..teachers.mirror import student_from_teacher
from .recipe import DistillTrainingArguments, did_you_mean

# Random-weight teachers of every family the trainer feeds (offline runs and tests); config from teacher_config.
RANDOM_TEACHERS = {
    "random-hubert": HubertConfig,
    "random-wavlm": WavLMConfig,
    "random-wav2vec2": Wav2Vec2Config,
    "random-data2vec-audio": Data2VecAudioConfig,
    "random-wav2vec2-conformer": Wav2Vec2ConformerConfig,
    "random-unispeech-sat": UniSpeechSatConfig,
    "random-whisper": WhisperConfig,
    "random-w2v-bert": Wav2Vec2BertConfig,
}
MIRROR = "mirror"  # `student: mirror`: the teacher's own encoder, with map reuse in `reuse_layers`


@functools.cache
def config_fields(config_class: type[PretrainedConfig]) -> set[str]:
    """The field names a config class knows: its and `PretrainedConfig`'s arguments, and a default instance's."""
    arguments = {
        name
        for cls in (config_class, PretrainedConfig)
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
    }
    return arguments | set(vars(config_class())) | set(config_class.attribute_map)


def _check_fields(values: Mapping[str, object] | None, config_class: type[PretrainedConfig], key: str) -> None:
    known = config_fields(config_class)
    for name in values or {}:
        if name not in known:
            raise UserError(
                f"unknown {key} field {name!r}{did_you_mean(name, known)}; {key} takes {config_class.__name__} fields"
            )


def _layers_in(layers: list[int], count: int) -> bool:
    """Whether `layers` names some of the 1-based layers 1..count, and only those."""
    return bool(layers) and all(1 <= layer <= count for layer in layers)


def _cnn_layer0(args: DistillTrainingArguments) -> bool:
    return args.distill_mode == "star" and args.star_layer0 == "cnn"


# Recipe values that go together only in some models, checked by `refuse_broken`: (whether the rule is broken,
# given `args` (the recipe) and the models known at that point, the refusal, formatted with the same names).
# MODEL_RULES need the recipe alone; TEACHER_RULES the loaded `teacher`; STUDENT_RULES the `student`, the
# teacher's config (`teacher`) and the `width` of the student's distilled outputs; LAYER_RULES the layer counts
# of both models (`student_layers`, `teacher_layers`).
MODEL_RULES = (
    (
        lambda args: bool(args.teacher_config) and args.teacher not in RANDOM_TEACHERS,
        f"teacher_config only applies to random teachers ({', '.join(RANDOM_TEACHERS)})",
    ),
    (
        lambda args: args.student == MIRROR and bool(args.student_config),
        f"student: {MIRROR} takes the teacher's shape and weights; remove student_config (or set it to null)",
    ),
    (
        lambda args: bool(args.reuse_layers) and args.student != MIRROR,
        f"reuse_layers applies to `student: {MIRROR}`; give a preset student layer_reuses_attention_map in "
        "student_config",
    ),
    (
        lambda args: args.student != MIRROR and args.student.lower() not in PRESETS and not Path(args.student).exists(),
        f"student {{args.student!r}} is neither a preset ({', '.join(PRESETS)}) nor an existing config.json / folder",
    ),
)
TEACHER_RULES = (
    (
        lambda args, teacher: args.distill_mode == "masking" and not teacher.supports_masking,
        "teacher {teacher.name!r} has no mask embedding ({teacher.no_mask_embedding}), which masking distillation "
        "needs; use distill_mode regression or star with it",
    ),
    (
        lambda args, teacher: _cnn_layer0(args) and not isinstance(teacher, Wav2Vec2StyleTeacher),
        "star_layer0: cnn needs a wav2vec2-style teacher's CNN features; {teacher.family} teachers take "
        "star_layer0: encoder-input",
    ),
    (
        lambda args, teacher: args.cache_teacher_outputs and not teacher.rows_independent,
        "cache_teacher_outputs keeps the teacher's layers of each utterance alone: it needs star_layer0: "
        "encoder-input and a teacher whose rows do not depend on the batch ({args.teacher!r} normalises its CNN "
        "over the padded batch: feat_extract_norm group); turn the cache off",
    ),
    (
        lambda args, teacher: args.cache_teacher_outputs and _cnn_layer0(args),
        "cache_teacher_outputs keeps the teacher's layers, not its CNN features: use star_layer0: encoder-input",
    ),
)
STUDENT_RULES = (
    (
        lambda args, student, teacher, width: (
            args.distill_mode in ("masking", "regression") and width != teacher.hidden_size
        ),
        "{args.distill_mode} distillation regresses teacher features of width {teacher.hidden_size}, but the "
        "student gives {width}; give the student projection heads (projection_head_size) or the teacher's width",
    ),
    (
        lambda args, student, teacher, width: args.distill_mode == "masking" and student.mask_emb is None,
        "masking distillation needs a student with use_mask_embedding=True",
    ),
)

LAYER_RULES = (
    (
        lambda args, student_layers, teacher_layers: (
            args.trainable_layers is not None and not _layers_in(args.trainable_layers, student_layers)
        ),
        "trainable_layers must name layers in 1..{student_layers}, got {args.trainable_layers}",
    ),
    (
        lambda args, student_layers, teacher_layers: (
            args.teacher_layers is not None
            and (len(args.teacher_layers) != student_layers or not _layers_in(args.teacher_layers, teacher_layers))
        ),
        "teacher_layers must list {student_layers} teacher layers in 1..{teacher_layers}, got {args.teacher_layers}",
    ),
)


def check_config_fields(distill_args: DistillTrainingArguments) -> None:
    """Refuse what no model of the recipe can take before any model is built: a recipe that breaks one of
    MODEL_RULES, or a mistyped `student_config` / `teacher_config` field (`hidden_sise`), which the config
    classes would keep as an unused attribute and train the default size. The model builders trust both."""
    refuse_broken(MODEL_RULES, args=distill_args)
    _check_fields(distill_args.student_config, ARMHubertConfig, "student_config")
    if distill_args.teacher in RANDOM_TEACHERS:  # other teachers refuse teacher_config altogether (MODEL_RULES)
        _check_fields(distill_args.teacher_config, RANDOM_TEACHERS[distill_args.teacher], "teacher_config")


def _load_teacher_model(distill_args: DistillTrainingArguments, seed: int) -> PreTrainedModel:
    name = distill_args.teacher
    if name in RANDOM_TEACHERS:
        try:
            config = RANDOM_TEACHERS[name](**(distill_args.teacher_config or {}))
        except (TypeError, ValueError, StrictDataclassError) as error:  # the config class's own checks
            reason = error.__cause__ if isinstance(error, StrictDataclassError) and error.__cause__ else error
            raise UserError(f"teacher_config for {name}: {first_line(reason)}") from None
        check_model_size(lambda: AutoModel.from_config(config), f"teacher_config for {name}")
        torch.manual_seed(seed)
        return AutoModel.from_config(config)
    if is_ctranslate2_whisper(name):
        return whisper_from_ctranslate2(name)
    try:
        return AutoModel.from_pretrained(name)
    except Exception as error:  # noqa: BLE001 - missing folder, no network, wrong repo: all user-facing
        raise UserError(
            f"could not load teacher {name!r}: {str(error).strip().splitlines()[0]}; give a transformers speech "
            "encoder's model id or folder (online, or cached with HF_HUB_OFFLINE=1), a CTranslate2 Whisper "
            "folder, or random-hubert"
        ) from None


def load_teacher(distill_args: DistillTrainingArguments, seed: int) -> TeacherEncoder:
    """The frozen teacher in eval mode, layer drop off (never trained, wrapped by DDP or saved), wrapped with
    its family's preprocessing (`TeacherEncoder`)."""
    teacher = teacher_encoder(
        _load_teacher_model(distill_args, seed), distill_args.teacher, random=distill_args.teacher in RANDOM_TEACHERS
    )
    refuse_broken(TEACHER_RULES, args=distill_args, teacher=teacher)
    teacher.config.layerdrop = 0.0
    if distill_args.distill_mode == "masking":
        teacher.config.apply_spec_augment = True  # transformers ignores mask_time_indices without it
    return teacher


def freeze_all_but(student: ARMHubertModel, layers: list[int]) -> None:
    """Train only the 1-based encoder `layers` (and the final LayerNorm with the last layer): the rest is frozen.
    The layers lie in 1..num_hidden_layers (LAYER_RULES)."""
    count = student.config.num_hidden_layers
    student.requires_grad_(False)
    for layer in layers:
        student.encoder.layers[layer - 1].requires_grad_(True)
    if count in layers and not student.config.has_projection_heads:
        student.encoder.layer_norm.requires_grad_(True)
    if student.projection_heads is not None:
        for layer in layers:
            student.projection_heads[layer - 1].requires_grad_(True)


def _mirror_student(distill_args: DistillTrainingArguments, teacher: TeacherEncoder) -> ARMHubertModel:
    """`student: mirror`: the teacher's encoder with map reuse in `reuse_layers` (no student_config: MODEL_RULES)."""
    return student_from_teacher(teacher.model, distill_args.reuse_layers or ()).train()


def build_student(
    distill_args: DistillTrainingArguments, teacher_config: PretrainedConfig, seed: int
) -> ARMHubertModel:
    """A random student from a preset or config; projection heads as wide as the teacher."""
    overrides = dict(distill_args.student_config or {})
    name = distill_args.student  # a preset or an existing path (MODEL_RULES)
    try:
        if name.lower() in PRESETS:
            config = ARMHubertConfig.from_preset(name, **overrides)
        else:
            config = ARMHubertConfig.from_pretrained(name, **overrides)
    except (TypeError, ValueError, OSError) as error:
        raise UserError(f"student config: {str(error).strip().splitlines()[0]}") from None
    if config.has_projection_heads and "projection_head_size" not in overrides:
        config.projection_head_size = teacher_config.hidden_size
    add_remote_code_entries(config)  # the saved student opens through every Auto class and the feature pipeline
    check_model_size(lambda: ARMHubertModel(config), "the student config")
    torch.manual_seed(seed)
    student = ARMHubertModel(config)
    mode = distill_args.distill_mode
    width = config.projection_head_size if config.has_projection_heads else config.hidden_size
    refuse_broken(STUDENT_RULES, args=distill_args, student=student, teacher=teacher_config, width=width)
    # Parameters a mode never uses stay out of the optimiser (and out of DDP's gradient reduction).
    if mode != "masking" and student.mask_emb is not None:
        student.mask_emb.requires_grad_(False)
    if mode == "star" and student.projection_heads is not None:
        student.projection_heads.requires_grad_(False)
    return student


def layer_pairs(distill_args: DistillTrainingArguments, student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (1-based) for each student layer 1..L_s: the recipe's teacher_layers (one for each student
    layer, each in 1..L_t: LAYER_RULES), or evenly spaced."""
    if distill_args.teacher_layers is not None:
        return list(distill_args.teacher_layers)
    if student_layers == teacher_layers:
        return list(range(1, student_layers + 1))
    return [max(1, round(layer * teacher_layers / student_layers)) for layer in range(1, student_layers + 1)]


def check_frame_rates(teacher: TeacherEncoder, student: ARMHubertModel) -> None:
    """Teacher and student frames must lie on one grid: the same hop, and for every input length frame
    counts at most one apart (the trainer compares their common real frames)."""
    student_hop = student.config.inputs_to_logits_ratio
    if teacher.frame_samples != student_hop or student.config.crop_seq_to_multiple != 1:
        raise UserError(
            f"teacher {teacher.name!r} gives a frame every {teacher.frame_samples} samples "
            f"({teacher.frame_samples / 16:.1f} ms), the student every {student_hop} "
            f"(crop_seq_to_multiple {student.config.crop_seq_to_multiple}); they cannot be aligned: give the student "
            f"a front-end of total stride {teacher.frame_samples} and crop_seq_to_multiple=1, or another teacher"
        )
    probe = torch.tensor([1040, 16000, 16319, 48123, 160007])
    teacher_frames = teacher.real_frames(probe)
    student_frames = student._get_feat_extract_output_lengths(probe)
    if (teacher_frames - student_frames).abs().max() > 1:
        raise UserError(
            f"teacher and student frames do not line up: for {probe.tolist()} samples the teacher gives "
            f"{teacher_frames.tolist()} frames, the student {student_frames.tolist()}; give the student the "
            "teacher's front-end kernels and strides"
        )


def teacher_and_student(
    distill_args: DistillTrainingArguments, seed: int
) -> tuple[TeacherEncoder, ARMHubertModel, list[int]]:
    """The frozen teacher, the seeded student (checked to give the teacher's frames) and the teacher layer
    (1-based) paired with each student layer; the recipe's model fields are checked first (`check_config_fields`),
    so every caller (the command, the step-timing benchmark) refuses what the builders trust."""
    check_config_fields(distill_args)
    teacher = load_teacher(distill_args, seed)
    if distill_args.student == MIRROR:
        student = _mirror_student(distill_args, teacher)
    else:
        student = build_student(distill_args, teacher.config, seed)
    student_layers, teacher_layers = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    refuse_broken(LAYER_RULES, args=distill_args, student_layers=student_layers, teacher_layers=teacher_layers)
    if distill_args.trainable_layers is not None:
        freeze_all_but(student, distill_args.trainable_layers)
    check_frame_rates(teacher, student)
    return teacher, student, layer_pairs(distill_args, student_layers, teacher_layers)
