"""Convert original ARMHuBERT / ARMwavLM / MaskHuBERT / STaRHuBERT checkpoints to Transformers folders.

    python convert_checkpoint.py CKPT [--config YAML] [--release NAME|none] --output_dir DIR [--overwrite]
    python convert_checkpoint.py --all SRC_DIR --output_dir REPO_DIR [--default NAME] [--overwrite]
        [--format {armhubert,hubert}] [--push_to_hub REPO_ID [--private]]

The original release stores PyTorch-Lightning checkpoints whose `state_dict` holds the frozen teacher
and the student (`student_model.*`), with the model configuration in
`hyper_parameters["cfg"]["distiller"]`; their optimizer state holds a pickled
`s3prl.optimizers.WarmupLinearSchedule`. STaR checkpoints have no hyper-parameters: pass their YAML
with `--config` (with `--all`, `NAME.yaml` next to `NAME.ckpt` is used). Checkpoints are read with
`torch.load(weights_only=True)`: the few known non-tensor classes of the training stack unpickle
into inert stand-ins, any other class is refused by name, and nothing from a pickle is ever run.

DIR receives `config.json` (with `auto_map`), `model.safetensors`, the five code files,
`preprocessor_config.json` and a model card (`README.md`), so
`AutoModel.from_pretrained(DIR, trust_remote_code=True)` loads it. `--all` writes one subfolder per
release (`from_pretrained(REPO_DIR, subfolder="ARMHuBERT-960h", ...)`) with the code files once at the
root, plus a complete copy of the default variant at the root, so `from_pretrained(REPO_DIR, ...)` loads
it: ARMHuBERT-960h when present, else the one `--default NAME` names (without either it refuses). `--format hubert` writes a plain `transformers` `HubertModel` (STaR models only: no map reuse, no
heads). Every output is built in a temporary folder beside the target and renamed at the end.
Errors exit with status 2 and one line, and leave the target as it was.

This file is the command only. The work is done by `armhubert.convert` (see its modules); from Python,
import it: `armhubert.convert.original.convert`, `armhubert.convert.folders.convert_checkpoint` /
`convert_folder`, `armhubert.convert.publish.push_to_hub`.
"""

import argparse
import sys
from collections.abc import Sequence

from transformers.utils import logging as transformers_logging

from armhubert.cli import CommandParser, run_main
from armhubert.convert.folders import OUTPUT_FORMATS, convert_checkpoint, convert_folder
from armhubert.convert.publish import publish_output

PROG = "convert_checkpoint.py"  # the name error lines start with, also for the `armhubert-convert` script


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="original .ckpt file (PyTorch-Lightning format)")
    parser.add_argument("--config", help="training YAML (required for STaR checkpoints, overrides the ckpt's)")
    parser.add_argument(
        "--release",
        "--name",
        dest="name",
        metavar="NAME|none",
        help="which release the checkpoint is, e.g. STaRHuBERT, or none for a run of your own (default: the file's "
        "name if it is a release name, else detected from the checkpoint)",
    )
    parser.add_argument(
        "--all",
        metavar="SRC_DIR",
        dest="source_dir",
        help="convert every .ckpt of SRC_DIR (with NAME.yaml where present) into subfolders of --output_dir",
    )
    parser.add_argument(
        "--default",
        metavar="NAME",
        help="with --all: the variant the repository root holds (the bare id loads it) when there is no ARMHuBERT-960h",
    )
    parser.add_argument("--output_dir", required=True, help="folder to write the converted model (or repository) into")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument(
        "--format",
        dest="output_format",
        choices=OUTPUT_FORMATS,
        default="armhubert",
        help="armhubert: this repo's model (remote code); hubert: plain transformers HubertModel (STaR models only)",
    )
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the finished output to this Hub repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.source_dir is None):
        parser.error("give either one CHECKPOINT or --all SRC_DIR")
    if args.source_dir is not None and (args.config or args.name):
        parser.error("--config and --release apply to one CHECKPOINT; with --all, name files after their releases")
    if args.default is not None and args.source_dir is None:
        parser.error("--default applies to --all")
    if args.private and not args.push_to_hub:
        parser.error("--private needs --push_to_hub")
    return args


def _convert_and_publish(argv: Sequence[str] | None) -> None:
    """Convert as the arguments say, then upload when asked; a failed upload keeps the written output."""
    args = parse_args(argv)
    transformers_logging.disable_progress_bar()  # the CLI reports in its own lines
    if args.source_dir is not None:
        output = convert_folder(
            args.source_dir, args.output_dir, args.overwrite, args.output_format, args.push_to_hub, args.default
        )
    else:
        output = convert_checkpoint(
            args.checkpoint,
            args.output_dir,
            args.config,
            args.overwrite,
            args.name,
            args.output_format,
            args.push_to_hub,
        )
    print(f"wrote {output}")
    if args.push_to_hub:
        print(f"published {publish_output(output, args.push_to_hub, private=args.private)}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command: exit status 0, or 2 with one `convert_checkpoint.py: error: ...` line for bad input."""
    return run_main(PROG, _convert_and_publish, argv)


if __name__ == "__main__":
    sys.exit(main())
