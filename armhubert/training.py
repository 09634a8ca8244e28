"""What every Trainer-based command (distillation, fine-tuning) shares: the final model save."""

import shutil
from pathlib import Path

from transformers import Trainer

from .io import move_files_into


def save_trained_model(trainer: Trainer, output_dir: str | Path, card: str | None = None) -> None:
    """Write the trained model (safetensors, config, code files, processor config, optional model card).

    `Trainer.save_model` runs on every rank (it gathers sharded weights under DeepSpeed / FSDP) into a
    staging folder; the main process then moves the files in with `config.json` last, so a crash never
    leaves something that looks like a complete model. No pickled `training_args.bin` is kept: the
    recipe or the card says how the model was trained.
    """
    output_dir = Path(output_dir)
    staging = output_dir / ".student-staging"
    if trainer.args.should_save:
        shutil.rmtree(staging, ignore_errors=True)  # left over from an interrupted run
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if not trainer.args.should_save:
        return
    try:
        if card is not None:
            (staging / "README.md").write_text(card, encoding="utf-8")
        (staging / "training_args.bin").unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_files_into(staging, output_dir)
