"""What an output depends on, and the output folder's checks: a killed run continues with `--resume`.

`run.json` holds the run's settings: the options that change what is written, the sha256 of the
model's weights and of the corpus listing. `--resume` refuses a folder written with other settings,
naming what differs, keeps every shard whose fingerprint (settings, codebook and the shard's
utterances) matches, and removes the temporary files the killed run left.
"""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..cli import UserError
from ..convert.cards import file_sha256
from ..files.placement import check_output_location
from ..files.untrusted import load_json_file
from .encoding import Encoder
from .plan import ExtractionArguments, ShardPlan
from .sources import Corpus
from .storage import FEATURES_FORMAT, INDEX_FILE
from .units import Codebook

RUN_FILE = "run.json"
MAX_RUN_FILE_BYTES = 1 << 20


def model_fingerprint(model: torch.nn.Module, leave_out: tuple[str, ...] = ()) -> str:
    """sha256 of every parameter and buffer (names, shapes, bytes): a resumed run must use the same weights.

    `leave_out`: name prefixes of weights the folder lacks (random, never used), which would differ every run.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if leave_out and name.startswith(leave_out):
            continue
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy())  # no copy of the bytes
    return digest.hexdigest()


def _corpus_fingerprint(corpus: Corpus) -> str:
    digest = hashlib.sha256()
    for utterance_id, length in zip(corpus.ids, corpus.lengths):
        digest.update(f"{utterance_id}\0{length}\n".encode())
    return digest.hexdigest()


def run_settings(args: ExtractionArguments, corpus: Corpus, encoder: Encoder) -> dict:
    """What the output depends on: the options (runtime ones left out), the model's weights, the corpus."""
    options = {key: value for key, value in asdict(args).items() if key not in ExtractionArguments.RUNTIME_FIELDS}
    options["input"] = str(Path(args.input).absolute()) if Path(args.input).exists() else args.input
    if args.codebook:
        options["codebook"] = file_sha256(args.codebook)
    model_sha256 = model_fingerprint(encoder.model, tuple(f"projection_heads.{n}." for n in encoder.missing_heads))
    if encoder.layer_sum is not None:
        model_sha256 += model_fingerprint(encoder.layer_sum)
    return {
        "format": FEATURES_FORMAT,
        "options": options,
        "model_sha256": model_sha256,
        "corpus_sha256": _corpus_fingerprint(corpus),
        "utterances": len(corpus.rows),
    }


def settings_sha256(settings: dict) -> str:
    """sha256 of `run_settings` (key order aside)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def shard_fingerprint(settings_digest: str, codebook: Codebook | None, corpus: Corpus, shard: ShardPlan) -> str:
    """What a finished shard file must carry to be kept on `--resume`: the settings' sha256, the codebook's
    centroids and the ids of the shard's utterances, batch by batch."""
    digest = hashlib.sha256(settings_digest.encode())
    if codebook is not None:
        digest.update(codebook.centroids.numpy().tobytes())
    digest.update(json.dumps([[corpus.ids[row] for row in batch] for batch in shard.batches]).encode())
    return digest.hexdigest()


def remove_stale_temporaries(output_dir: Path) -> None:
    """Delete the temporary files that a killed run of this tool left in its output folder (never anything else)."""
    for pattern in (".shard-*.safetensors", f".{INDEX_FILE}.*", f".{RUN_FILE}.*", ".codebook.*.safetensors"):
        for path in output_dir.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink()


def _previous_settings(output_dir: Path) -> dict:
    """The settings in `output_dir/run.json` (the door of a run file: bounded JSON, a mapping with a mapping of
    options); one UserError when there are none (not an output of this tool) or it is not such a file."""
    run_file = output_dir / RUN_FILE
    previous, problem = None, f"{output_dir} holds no {RUN_FILE}, so it is not an output of this tool"
    if run_file.is_file():
        try:
            previous = load_json_file(run_file, str(run_file), "a run file is a few kB", MAX_RUN_FILE_BYTES, 10_000)
        except UserError as error:
            problem = f"{error}; it is not the run file of this tool"
        else:
            is_run_file = isinstance(previous, dict) and isinstance(previous.get("options", {}), dict)
            problem = None if is_run_file else f"{run_file} is not the run file of this tool (not its JSON)"
    if problem is not None:
        raise UserError(f"--resume: {problem}; use a new folder")
    return previous


def _changed_settings(previous: dict, settings: dict) -> list[str]:
    """The options that differ, else the other settings that do (model weights, corpus, ...)."""
    old, new = previous.get("options", {}), settings["options"]
    changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    return changed or [key for key in settings if previous.get(key) != settings[key]]


def check_output(args: ExtractionArguments, settings: dict) -> Path:
    """Refuse an output that overlaps an input, or a non-empty one unless `--resume` continues the same run."""
    inputs = [args.input if Path(args.input).exists() else None, args.model, args.codebook]
    output_dir = check_output_location(args.output_dir, inputs)
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return output_dir
    if not args.resume:
        raise UserError(
            f"output folder {output_dir} is not empty; pass --resume to continue the run that wrote it, or choose a "
            "new folder"
        )
    previous = _previous_settings(output_dir)
    if previous != settings:
        raise UserError(
            f"--resume: {output_dir} was written with other settings ({', '.join(_changed_settings(previous, settings))}"
            " differ); run with the same options and data, or use a new folder"
        )
    return output_dir
