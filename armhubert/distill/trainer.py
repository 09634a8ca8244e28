"""All Trainer customisation of distillation: `DistillTrainer` and its callbacks (resuming: `resume`).

Only public `Trainer` methods are overridden (`get_train_dataloader`, `compute_loss`, `prediction_step`,
`evaluation_loop`, `log`, `get_decay_parameter_names`) and a callback does the rest (sampler epoch,
throughput clock; `armhubert.training.checkpoints.CheckpointRotation` keeps the best
checkpoints), so a `transformers` release that reshapes its private helpers
does not silently change a run.
"""

import contextlib
import logging
import time
from functools import partial

import torch
from accelerate.utils.memory import clear_device_cache
from torch import Tensor, nn
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from transformers.trainer_utils import seed_worker

from configuration_armhubert import SAMPLING_RATE

from ..speech.librispeech import AudioCollator, EpochSeededLengthGroupedSampler
from ..teachers.encoders import TeacherEncoder
from ..training.checkpoints import CheckpointRotation
from ..training.guarded_trainer import GuardedTrainer
from .losses import layer_weights, masking_distillation_loss, regression_loss, star_loss
from .recipe import DistillTrainingArguments

logger = logging.getLogger(__name__)


class _DistillCallback(TrainerCallback):
    """Keeps the sampler's epoch, the throughput clock and the end-of-run report in step with training."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._log_clock = time.perf_counter()

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = int(state.epoch or 0)
        if self.trainer._length_sampler is not None:
            self.trainer._length_sampler.set_epoch(epoch)
        if isinstance(self.trainer.data_collator, AudioCollator):
            self.trainer.data_collator.epoch = epoch

    def on_train_end(self, args, state, control, **kwargs):
        total = self.trainer._drain_unreadable()
        if total and state.is_world_process_zero:
            logger.warning("%d unreadable audio file(s) were skipped during training (see the warnings above)", total)


@contextlib.contextmanager
def capture_cnn_features(teacher: nn.Module, student: nn.Module):
    """Within the block, record the CNN features (B, T, D) that teacher and student hand their transformers.

    That is the CNN output after its LayerNorm and projection to the model width, before the positional
    convolution: the input of each model's `encoder` (both the `transformers` teachers and
    `ARMHubertModel` call it with the features first). Yields a dict that receives "teacher" and "student".
    """
    outputs = {}

    def recorder(name):
        def hook(module, args, kwargs):
            outputs[name] = args[0] if args else kwargs["hidden_states"]

        return hook

    handles = [
        teacher.encoder.register_forward_pre_hook(recorder("teacher"), with_kwargs=True),
        student.encoder.register_forward_pre_hook(recorder("student"), with_kwargs=True),
    ]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class DistillTrainer(GuardedTrainer):
    """`transformers.Trainer` for distillation: `model` is the student, `teacher` a frozen encoder.

    The teacher (a `TeacherEncoder`: any family, fed its own inputs from the batch's audio) lives beside
    the Trainer's model: it is never wrapped by DDP, never in the optimiser and never saved. Teacher and
    student are compared on their common real frames (the teacher's frame count may differ by one, and
    Whisper's is its 30 s window's). Losses: masking distillation, STaR or plain regression (`DistillTrainingArguments`).
    Logs every loss part, audio seconds per second and skipped files; validation compares the
    unmasked student with the unmasked teacher.
    """

    def __init__(
        self,
        *args,
        teacher: TeacherEncoder,
        distill_args: DistillTrainingArguments,
        teacher_layers: list[int],
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.distill_args = distill_args
        self.teacher = teacher.to(self.args.device)
        self.teacher_layers = teacher_layers
        # compute_loss returns a per-batch mean: let the Trainer divide by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self.model_accepts_loss_kwargs = False
        self._teacher_single_pass = distill_args.teacher_single_pass
        # {utterance id: L + 1 teacher states (T_kept, D)}, filled on first sight (cache_teacher_outputs)
        self._teacher_cache = {} if distill_args.cache_teacher_outputs else None
        self._length_sampler = None
        self._train_parts, self._eval_parts = {}, {}
        self._audio_samples, self._unreadable, self._unreadable_total, self._eval_unreadable = 0.0, 0, 0, 0
        self._log_clock = None
        self.add_callback(_DistillCallback(self))
        keep_best = self.distill_args.keep_best_checkpoints  # the best k by eval_loss, plus the last
        self.add_callback(
            CheckpointRotation(self.args, keep_last=None if keep_best is None else 1, keep_best=keep_best or 0)
        )

    # ---- data

    def get_train_dataloader(self) -> DataLoader:
        """The Trainer's training loader, but in a length-grouped order drawn from (seed, epoch) only
        (`EpochSeededLengthGroupedSampler`): the same on every rank and after a resume. Other sampling
        strategies are the Trainer's. The recipe fixes `remove_unused_columns=False`: the dataset goes in as it is.
        """
        args = self.args
        if args.train_sampling_strategy != "group_by_length":
            return super().get_train_dataloader()
        self._length_sampler = EpochSeededLengthGroupedSampler(
            args.train_batch_size * args.gradient_accumulation_steps,
            list(self.train_dataset[args.length_column_name]),
            args.data_seed if args.data_seed is not None else args.seed,
        )
        loader = DataLoader(
            self.train_dataset,
            batch_size=args.train_batch_size,
            sampler=self._length_sampler,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            multiprocessing_context=args.dataloader_multiprocessing_context,
            prefetch_factor=args.dataloader_prefetch_factor,
            in_order=args.dataloader_in_order,
            drop_last=args.dataloader_drop_last,
            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
        )
        return self.accelerator.prepare(loader)

    # ---- optimiser: weight decay on every parameter whose name has no "bias" (as the release)

    def get_decay_parameter_names(self, model):
        return [name for name, _ in model.named_parameters() if "bias" not in name]

    # ---- forward passes

    def _frame_validity(self, model, num_frames: int, attention_mask: Tensor) -> Tensor:
        """(B, T) bool, True = a frame both models compare: real for the student and the teacher. A student
        with a window (a Whisper mirror) is compared on its whole window, which a decoder reads."""
        student = self.accelerator.unwrap_model(model)
        if student.config.frontend_window_samples is not None:
            return attention_mask.new_ones(attention_mask.shape[0], num_frames, dtype=torch.bool)
        real = student._get_feature_vector_attention_mask(num_frames, attention_mask).bool()
        teacher_frames = self.teacher.real_frames(attention_mask.sum(-1))
        return real & (torch.arange(num_frames, device=real.device)[None] < teacher_frames[:, None])

    def _teacher_states(self, input_values, attention_mask, mask_time_indices=None):
        return self.teacher.hidden_states(input_values, attention_mask, mask_time_indices)

    def teacher_hidden_states(
        self, input_values: Tensor, attention_mask: Tensor, mask: Tensor | None = None
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...] | None]:
        """Teacher hidden states (L+1 tensors) on clean input and, when `mask` is given, on masked input."""
        # DeepSpeed hands the student inputs in its own dtype; the teacher keeps its weights' dtype.
        input_values = input_values.to(self.teacher.dtype)
        with torch.no_grad(), self.accelerator.autocast():
            if mask is None:
                return self._teacher_states(input_values, attention_mask), None
            if self._teacher_single_pass:
                try:
                    both = self._teacher_states(
                        torch.cat([input_values, input_values]),
                        torch.cat([attention_mask, attention_mask]),
                        torch.cat([torch.zeros_like(mask), mask]),
                    )
                    size = input_values.shape[0]
                    return tuple(h[:size] for h in both), tuple(h[size:] for h in both)
                except torch.OutOfMemoryError:
                    self._teacher_single_pass = False
                    logger.warning(
                        "The doubled teacher batch does not fit in memory: running two teacher passes from now on"
                    )
                    clear_device_cache(garbage_collection=True)
            return (
                self._teacher_states(input_values, attention_mask),
                self._teacher_states(input_values, attention_mask, mask),
            )

    def cached_teacher_states(self, ids: list[str], input_values: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        """`teacher_hidden_states` on clean input, each utterance's computed once and then kept (by id).

        A row keeps its real frames, or the teacher's whole window for a student with one (a Whisper
        mirror reads it all); rows are padded with zeros to the batch's longest (outside `_frame_validity`).
        """
        missing = [row for row, key in enumerate(ids) if key not in self._teacher_cache]
        if missing:
            rows = torch.tensor(missing, device=input_values.device)
            states, _ = self.teacher_hidden_states(input_values[rows], attention_mask[rows])
            keep = self.teacher.real_frames(attention_mask[rows].sum(-1)).tolist()
            if self.accelerator.unwrap_model(self.model).config.frontend_window_samples is not None:
                keep = [states[0].shape[1]] * len(missing)
            for index, row in enumerate(missing):
                self._teacher_cache[ids[row]] = [state[index, : keep[index]].clone() for state in states]
        cached = [self._teacher_cache[key] for key in ids]
        return tuple(
            torch.nn.utils.rnn.pad_sequence([row[layer] for row in cached], batch_first=True)
            for layer in range(len(cached[0]))
        )

    def distillation_loss(
        self, model: nn.Module, inputs: dict[str, Tensor], masked: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, parts) of the configured objective; `masked=False` gives the unmasked (validation) loss."""
        d = self.distill_args
        input_values, attention_mask = inputs["input_values"], inputs["attention_mask"]
        mask = inputs.get("mask_time_indices") if masked and d.distill_mode == "masking" else None
        if masked and d.distill_mode == "masking" and mask is None:  # a Python caller's collator: a programming error
            raise ValueError("masking distillation needs mask_time_indices in the batch (AudioCollator with a masker)")
        cnn_layer0 = d.distill_mode == "star" and d.star_layer0 == "cnn"
        if cnn_layer0:
            capture = capture_cnn_features(self.teacher.model, self.accelerator.unwrap_model(model))
        else:
            capture = contextlib.nullcontext({})
        ids = inputs.get("utterance_ids")
        with capture as cnn:
            if self._teacher_cache is not None and ids is not None:
                teacher_clean, teacher_masked = self.cached_teacher_states(ids, input_values, attention_mask), None
            else:
                teacher_clean, teacher_masked = self.teacher_hidden_states(input_values, attention_mask, mask)
            output = model(
                input_values, attention_mask=attention_mask, mask_time_indices=mask, output_hidden_states=True
            )
        frames = min(output.hidden_states[0].shape[1], teacher_clean[0].shape[1])
        valid = self._frame_validity(model, frames, attention_mask)
        pairs = self.teacher_layers
        student_states = list(output.hidden_states)
        if not self.accelerator.unwrap_model(model).config.has_projection_heads:
            # The last layer as the model returns it: transformers' pre-LN teachers return theirs after the
            # final LayerNorm, and so does a head-less pre-LN student's `last_hidden_state` (post-LN: the same).
            student_states[-1] = output.last_hidden_state
        if d.distill_mode == "star":
            student = [state[:, :frames] for state in student_states]
            teacher = [teacher_clean[0][:, :frames]] + [teacher_clean[layer][:, :frames] for layer in pairs]
            if cnn_layer0:
                teacher[0], student[0] = cnn["teacher"][:, :frames], cnn["student"][:, :frames]
            return star_loss(
                student,
                teacher,
                valid,
                d.star_normalization,
                d.star_reduction,
                d.star_layer_weight,
                d.star_intra_weight,
                d.star_recompute,
            )
        student = output.projected_hidden_states if output.projected_hidden_states is not None else student_states[1:]
        student = [state[:, :frames] for state in student]
        weights = layer_weights(len(pairs), d.hint_layer_weight, d.last_layer_weight)
        clean = [teacher_clean[layer][:, :frames] for layer in pairs]
        if mask is not None:
            masked_targets = [teacher_masked[layer][:, :frames] for layer in pairs]
            return masking_distillation_loss(
                student, clean, masked_targets, mask[:, :frames], valid, weights, d.loss_type, d.loss_normalization
            )
        return regression_loss(student, clean, valid, weights, d.loss_type)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        unreadable = inputs.pop("num_unreadable", None)
        loss, parts = self.distillation_loss(model, inputs, masked=model.training)
        if model.training:  # device tensors: no host sync per step
            _accumulate(self._train_parts, parts)
            self._audio_samples = self._audio_samples + inputs["attention_mask"].sum().float()
            if unreadable is not None:
                self._unreadable = self._unreadable + unreadable
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = dict(self._prepare_inputs(inputs))
        unreadable = inputs.pop("num_unreadable", None)
        if unreadable is not None:
            self._eval_unreadable = self._eval_unreadable + unreadable
        with torch.no_grad(), self.accelerator.autocast():
            loss, parts = self.distillation_loss(model, inputs, masked=False)
        _accumulate(self._eval_parts, parts)
        return loss.detach(), None, None

    # ---- logging (every rank calls these at the same points, so the reductions line up)

    def _reduce_parts(self, accumulated):
        """{name: mean over batches and processes} of accumulated loss parts."""
        if not accumulated:
            return {}
        names = sorted(accumulated)
        local = torch.stack([torch.stack([accumulated[n][0], accumulated[n][1]]) for n in names]).to(self.args.device)
        total = self.accelerator.reduce(local.float(), reduction="sum")
        return {name: (total[i, 0] / total[i, 1].clamp(min=1)).item() for i, name in enumerate(names)}

    def _as_device_tensor(self, value):
        return torch.as_tensor(value, dtype=torch.float32).to(self.args.device)

    def _drain_unreadable(self):
        count = self.accelerator.reduce(self._as_device_tensor(self._unreadable), reduction="sum")
        self._unreadable = 0
        self._unreadable_total += int(count.item())
        return self._unreadable_total

    def _training_log_parts(self):
        """Loss parts, audio seconds per second and skipped files since the last training log (all ranks reduce)."""
        logs = self._reduce_parts(self._train_parts)
        self._train_parts = {}
        audio = self.accelerator.reduce(self._as_device_tensor(self._audio_samples), reduction="sum")
        self._audio_samples = 0.0
        now = time.perf_counter()
        elapsed = now - (self._log_clock or now)
        self._log_clock = now
        if elapsed > 0:
            logs["audio_seconds_per_second"] = audio.item() / SAMPLING_RATE / elapsed
        logs["unreadable_files"] = self._drain_unreadable()
        return logs

    def log(self, logs, start_time=None):
        """The Trainer's log; its periodic training log (the one with "loss", which every rank calls at the
        same step) also gets the loss parts, throughput and skipped files."""
        if "loss" in logs:
            logs = {**logs, **self._training_log_parts()}
        super().log(logs, start_time)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        self._eval_parts, self._eval_unreadable = {}, 0
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        for name, value in self._reduce_parts(self._eval_parts).items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        skipped = self.accelerator.reduce(self._as_device_tensor(self._eval_unreadable), "sum")
        output.metrics[f"{metric_key_prefix}_unreadable_files"] = int(skipped.item())
        return output


def _accumulate(store: dict[str, list[Tensor]], parts: dict[str, Tensor]) -> None:
    """Add detached loss parts to `store` as {name: [sum, count]} device tensors (no host sync)."""
    for name, value in parts.items():
        value = value.detach().float()
        if name in store:
            store[name][0] += value
            store[name][1] += 1
        else:
            store[name] = [value.clone(), torch.ones((), device=value.device)]
