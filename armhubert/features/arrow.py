"""`--format arrow`: the finished shards as one `datasets` dataset (`save_to_disk`), `datasets.load_from_disk`-able."""

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import datasets
from safetensors import safe_open

from ..files.atomic import staged_folder
from .shards import shard_metadata

DATASET_FOLDER = "dataset"
ARROW_CACHE_PREFIX = ".arrow-cache-"


def write_arrow_dataset(output_dir: Path, index: dict) -> Path:
    """The shards as one `datasets` dataset in `output_dir/dataset` (save_to_disk): columns `id`, `frames`,
    one Array2D per feature, `units` (int16 sequences) when written. Returns its folder."""
    dtype = index["dtype"]
    columns = {"id": datasets.Value("string"), "frames": datasets.Value("int32")}
    columns.update({name: datasets.Array2D((None, width), dtype) for name, width in index["widths"].items()})
    if index.get("units"):
        columns["units"] = datasets.Sequence(datasets.Value("int16"))
    shard_names = index["shards"]

    def rows():
        for shard_name in shard_names:
            with safe_open(output_dir / shard_name, framework="np") as handle:
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
                for utterance_id, offset, frames, unit_offset, units in shard_metadata(output_dir / shard_name)[
                    "utterances"
                ]:
                    row = {"id": utterance_id, "frames": frames}
                    row.update({name: tensors[name][offset : offset + frames] for name in index["widths"]})
                    if "units" in columns:
                        row["units"] = tensors["units"][unit_offset : unit_offset + units]
                    yield row

    target = output_dir / DATASET_FOLDER
    for stale in output_dir.glob(f"{ARROW_CACHE_PREFIX}*"):  # left by a run killed while converting
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=ARROW_CACHE_PREFIX, dir=output_dir) as cache:
        fingerprint = hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()  # no hashing of `rows`
        dataset = datasets.Dataset.from_generator(
            rows, features=datasets.Features(columns), cache_dir=cache, fingerprint=fingerprint
        )
        with staged_folder(target, overwrite=False) as staging:
            dataset.save_to_disk(str(staging))
        del dataset
    return target
