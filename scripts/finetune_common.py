"""What `finetune_ctc.py` and `finetune_classification.py` share: model arguments and loading,
audio batching, the atomic final save and the command-line error handling."""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments, set_seed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configuration_armhubert import PRESETS, ARMHubertConfig  # noqa: E402
from armhubert.audio import DataError, read_audio  # noqa: E402
from armhubert.training import save_trained_model  # noqa: E402
from configuration_armhubert import SAMPLING_RATE  # noqa: E402
from modeling_armhubert import add_remote_code_entries  # noqa: E402


class UsageError(Exception):
    """A problem with the user's arguments or inputs, reported as one line."""


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=None,
        metadata={"help": "Encoder to fine-tune: a folder written by convert_checkpoint.py or distill_trainer.py, or a Hub id."},
    )
    preset: str = field(
        default=None,
        metadata={"help": f"Start from random weights of a release shape instead (smoke tests): {', '.join(PRESETS)}."},
    )
    freeze_feature_encoder: bool = field(default=True, metadata={"help": "Keep the CNN feature encoder frozen."})
    freeze_base_model: bool = field(
        default=False, metadata={"help": "Train only the head (and layer weights), as SUPERB does with a frozen upstream."}
    )
    use_weighted_layer_sum: bool = field(
        default=False,
        metadata={"help": "Feed the head a learned weighted sum of the layers SUPERB used instead of the last output."},
    )
    apply_spec_augment: bool = field(default=True, metadata={"help": "SpecAugment-style masking while training."})
    mask_time_prob: float = field(default=0.05, metadata={"help": "Share of frames masked (mask_time_length-frame spans)."})
    mask_time_length: int = field(default=10, metadata={"help": "Length of a time-mask span, in frames."})
    mask_feature_prob: float = field(default=0.0, metadata={"help": "Share of channels zeroed."})
    mask_feature_length: int = field(default=10, metadata={"help": "Length of a channel-mask span."})
    final_dropout: float = field(default=0.1, metadata={"help": "Dropout before the CTC head."})
    layerdrop: float = field(default=0.0, metadata={"help": "Probability of skipping a whole layer while training."})


def parse_arguments(dataclass_types, argv, prog):
    """HfArgumentParser over the dataclasses + TrainingArguments; invalid values become a UsageError."""
    parser = HfArgumentParser((*dataclass_types, TrainingArguments))
    parser.prog = prog
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:
        raise UsageError(str(error).strip().splitlines()[0]) from None


def parse_run_arguments(data_arguments_class, argv, prog):
    """Parse and check (model, data, training) arguments of a fine-tuning run and seed it."""
    model_args, data_args, training_args = parse_arguments((ModelArguments, data_arguments_class), argv, prog)
    if training_args.output_dir in (None, "trainer_output"):
        raise UsageError("--output_dir is required")
    check_model_arguments(model_args)
    # Rows keep their undecoded audio for the collator; length grouping reads `num_samples`.
    training_args.remove_unused_columns = False
    training_args.length_column_name = "num_samples"
    set_seed(training_args.seed)
    return model_args, data_args, training_args


def check_model_arguments(model_args):
    """Fail before any data is read when the model choice is missing or ambiguous."""
    if model_args.model_name_or_path and model_args.preset:
        raise UsageError("give either --model_name_or_path or --preset, not both")
    if not model_args.model_name_or_path and not model_args.preset:
        raise UsageError(
            "no model given: pass --model_name_or_path (a converted or distilled model folder, or a Hub id) "
            "or --preset NAME for random weights"
        )


def load_head_model(head_class, model_args, **head_config):
    """The task model, from a saved encoder / model (`model_name_or_path`) or a random preset.

    `head_config` sets head fields (vocab_size, num_labels, ...). The ARM recipes' distillation-only
    gradient scaling (`layer_grad_scale`) is switched off: it damps lower layers' gradients by up to 1/L.
    """
    overrides = dict(
        use_weighted_layer_sum=model_args.use_weighted_layer_sum,
        apply_spec_augment=model_args.apply_spec_augment,
        mask_time_prob=model_args.mask_time_prob,
        mask_time_length=model_args.mask_time_length,
        mask_feature_prob=model_args.mask_feature_prob,
        mask_feature_length=model_args.mask_feature_length,
        final_dropout=model_args.final_dropout,
        layerdrop=model_args.layerdrop,
        layer_grad_scale=False,
        **head_config,
    )
    check_model_arguments(model_args)
    if model_args.model_name_or_path:
        source = model_args.model_name_or_path
        try:
            model = head_class.from_pretrained(source, **overrides)
        except (OSError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UsageError(f"cannot load the model {source}: {reason}") from None
    else:
        try:
            model = head_class(ARMHubertConfig.from_preset(model_args.preset, **overrides))
        except ValueError as error:
            raise UsageError(str(error)) from None
    if model_args.freeze_feature_encoder:
        model.freeze_feature_encoder()
    if model_args.freeze_base_model:
        model.freeze_base_model()
    return model


def decode_audio_batch(rows, feature_extractor):
    """Decode each row's undecoded `audio` dict (soundfile + soxr) and pad: input_values, attention_mask."""
    arrays = []
    for row in rows:
        samples = read_audio(row["audio"], target_rate=SAMPLING_RATE)
        if samples.size == 0:
            raise DataError(f"audio {row['audio'].get('path') or row.get('id')} is empty")
        arrays.append(samples)
    return feature_extractor(
        arrays, sampling_rate=SAMPLING_RATE, padding=True, return_attention_mask=True, return_tensors="pt"
    )


def check_min_duration(dataset, config, what):
    """Refuse utterances shorter than the CNN's receptive field, naming one."""
    field_samples = config.receptive_field
    too_short = dataset.filter(lambda n: n < field_samples, input_columns="num_samples")
    if len(too_short):
        example = too_short[0].get("id") or too_short[0]["audio"].get("path")
        raise DataError(
            f"{len(too_short)} {what} utterance(s) are shorter than {field_samples} samples "
            f"({1000 * field_samples / SAMPLING_RATE:.0f} ms), e.g. {example}; remove them"
        )


def train_evaluate_and_save(trainer, output_dir, make_card):
    """Train, evaluate, then save model, processor and `make_card(metrics, steps)` atomically.

    The saved config lists every Auto class and the feature pipeline (`add_remote_code_entries`);
    the atomic multi-process save is `armhubert.training.save_trained_model`.
    """
    train_result = trainer.train()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    add_remote_code_entries(trainer.model.config)
    save_trained_model(trainer, output_dir, card=make_card(metrics, train_result.global_step))
    return {"train": train_result, "eval": metrics, "log_history": trainer.state.log_history}


def run_cli(prog, run, argv=None):
    """Run `run(argv)`; data and usage problems exit with status 2 and one line, no traceback."""
    try:
        run(argv)
    except (UsageError, DataError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0
