"""The teacher and the student of a distillation run, and the checks that they fit together."""

import functools
import inspect
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoModel, HubertConfig, PretrainedConfig, PreTrainedModel, Wav2Vec2Config, WavLMConfig

from configuration_armhubert import PRESETS, ARMHubertConfig
from modeling_armhubert import ARMHubertModel

from ..cli import UserError
from ..remote_code import add_remote_code_entries
from ..untrusted import check_model_size
from .recipe import DistillArguments, did_you_mean

RANDOM_TEACHERS = {"random-hubert": HubertConfig, "random-wavlm": WavLMConfig, "random-wav2vec2": Wav2Vec2Config}


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


def check_config_fields(distill_args: DistillArguments) -> None:
    """Refuse a mistyped `student_config` / `teacher_config` field (`hidden_sise`) before any model is built:
    the config classes would keep it as an unused attribute and train the default size."""
    _check_fields(distill_args.student_config, ARMHubertConfig, "student_config")
    if distill_args.teacher in RANDOM_TEACHERS:  # other teachers refuse teacher_config altogether
        _check_fields(distill_args.teacher_config, RANDOM_TEACHERS[distill_args.teacher], "teacher_config")


def load_teacher(distill_args: DistillArguments, seed: int) -> PreTrainedModel:
    """The frozen teacher in eval mode, layer drop off (never trained, wrapped by DDP or saved)."""
    name = distill_args.teacher
    if name in RANDOM_TEACHERS:
        try:
            config = RANDOM_TEACHERS[name](**(distill_args.teacher_config or {}))
        except (TypeError, ValueError) as error:
            raise UserError(f"teacher_config for {name}: {str(error).splitlines()[0]}") from None
        check_model_size(lambda: AutoModel.from_config(config), f"teacher_config for {name}")
        torch.manual_seed(seed)
        teacher = AutoModel.from_config(config)
    else:
        if distill_args.teacher_config:
            raise UserError("teacher_config only applies to random-hubert / random-wavlm / random-wav2vec2 teachers")
        try:
            teacher = AutoModel.from_pretrained(name)
        except Exception as error:  # noqa: BLE001 - missing folder, no network, wrong repo: all user-facing
            raise UserError(
                f"could not load teacher {name!r}: {str(error).strip().splitlines()[0]}; give a transformers HuBERT / "
                "WavLM / wav2vec2 model id or folder (online, or cached with HF_HUB_OFFLINE=1), or random-hubert"
            ) from None
    if not hasattr(teacher, "_get_feat_extract_output_lengths") or not hasattr(teacher, "feature_extractor"):
        raise UserError(f"teacher {name!r} ({type(teacher).__name__}) is not a wav2vec2-style speech encoder")
    teacher.config.layerdrop = 0.0
    if distill_args.distill_mode == "masking":
        if getattr(teacher, "masked_spec_embed", None) is None:
            raise UserError(
                f"teacher {name!r} has no mask embedding (masked_spec_embed; its config has mask_time_prob=0), "
                "which masking distillation needs"
            )
        teacher.config.apply_spec_augment = True  # transformers ignores mask_time_indices without it
    return teacher.eval().requires_grad_(False)


def build_student(distill_args: DistillArguments, teacher_config: PretrainedConfig, seed: int) -> ARMHubertModel:
    """A random student from a preset or config; projection heads as wide as the teacher."""
    overrides = dict(distill_args.student_config or {})
    name = distill_args.student
    try:
        if name.lower() in PRESETS:
            config = ARMHubertConfig.from_preset(name, **overrides)
        elif Path(name).exists():
            config = ARMHubertConfig.from_pretrained(name, **overrides)
        else:
            raise UserError(
                f"student {name!r} is neither a preset ({', '.join(PRESETS)}) nor an existing config.json / folder"
            )
    except (TypeError, ValueError, OSError) as error:
        raise UserError(f"student config: {str(error).strip().splitlines()[0]}") from None
    if config.has_projection_heads and "projection_head_size" not in overrides:
        config.projection_head_size = teacher_config.hidden_size
    add_remote_code_entries(config)  # the saved student opens through every Auto class and the feature pipeline
    check_model_size(lambda: ARMHubertModel(config), "the student config")
    torch.manual_seed(seed)
    student = ARMHubertModel(config)
    mode = distill_args.distill_mode
    distilled_width = config.projection_head_size if config.has_projection_heads else config.hidden_size
    if mode in ("masking", "regression") and distilled_width != teacher_config.hidden_size:
        raise UserError(
            f"{mode} distillation regresses teacher features of width {teacher_config.hidden_size}, but the student "
            f"gives {distilled_width}; give the student projection heads (projection_head_size) or the teacher's width"
        )
    if mode == "masking" and student.mask_emb is None:
        raise UserError("masking distillation needs a student with use_mask_embedding=True")
    # Parameters a mode never uses stay out of the optimiser (and out of DDP's gradient reduction).
    if mode != "masking" and student.mask_emb is not None:
        student.mask_emb.requires_grad_(False)
    if mode == "star" and student.projection_heads is not None:
        student.projection_heads.requires_grad_(False)
    return student


def layer_pairs(distill_args: DistillArguments, student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (1-based) for each student layer 1..L_s."""
    if distill_args.teacher_layers is not None:
        pairs = [int(layer) for layer in distill_args.teacher_layers]
        if len(pairs) != student_layers or not all(1 <= layer <= teacher_layers for layer in pairs):
            raise UserError(
                f"teacher_layers must list {student_layers} teacher layers in 1..{teacher_layers}, got {pairs}"
            )
        return pairs
    if student_layers == teacher_layers:
        return list(range(1, student_layers + 1))
    return [max(1, round(layer * teacher_layers / student_layers)) for layer in range(1, student_layers + 1)]


def check_frame_rates(teacher: PreTrainedModel, student: ARMHubertModel) -> None:
    """Teacher and student must give the same number of frames for every input length."""
    probe = torch.tensor([400, 401, 719, 16000, 16319, 48123, 160007])
    teacher_frames = teacher._get_feat_extract_output_lengths(probe).tolist()
    student_frames = student._get_feat_extract_output_lengths(probe)
    multiple = student.config.crop_seq_to_multiple
    student_frames = (student_frames - student_frames % multiple).tolist()
    if teacher_frames != student_frames:
        raise UserError(
            f"teacher and student frame rates differ: for {probe.tolist()} samples the teacher gives {teacher_frames} "
            f"frames, the student {student_frames}; give the student a CNN with the teacher's kernels/strides "
            f"(total stride {math.prod(teacher.config.conv_stride)}) and crop_seq_to_multiple=1"
        )


def teacher_and_student(distill_args: DistillArguments, seed: int) -> tuple[PreTrainedModel, ARMHubertModel, list[int]]:
    """The frozen teacher, the seeded student (checked to give the teacher's frames) and the teacher layer
    (1-based) paired with each student layer."""
    teacher = load_teacher(distill_args, seed)
    student = build_student(distill_args, teacher.config, seed)
    check_frame_rates(teacher, student)
    pairs = layer_pairs(distill_args, student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    return teacher, student, pairs
