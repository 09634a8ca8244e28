"""Discrete units: a k-means codebook over one layer's features, nearest-centroid assignment, deduplicated runs.

Units are the input of speech language models, unit-based TTS and voice conversion: every frame
becomes the number of its nearest centroid. A codebook is fitted once on a sample of the corpus and
saved with what it was fitted on (the model, the representation and the layer), so that applying it
later to features of another layer or another model is refused instead of giving silent nonsense.

- `fit_codebook`: k-means on (N, D) features: k-means++ seeding (scikit-learn's `kmeans_plusplus`), then
  Lloyd iterations by faiss. Chosen by measurement (docs/features.md): scikit-learn's MiniBatchKMeans
  with the HuBERT recipe's settings reaches about the same distortion 17x slower, and faiss alone
  (random seeding) can merge well-separated clusters. The `units` extra installs both;
- `save_codebook` / `load_codebook`: a safetensors file, tensor `centroids` (K, D) float32 plus metadata;
  `open_codebook` is the door that checks its header before the centroids are read;
- `assign_units`: nearest centroid in torch (exact squared distances, the same units on every call);
- `deduplicate_runs`: collapse repeated units (`1 1 1 5 5 2` -> `1 5 2`), as unit LMs take them.
"""

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..cli import UserError
from ..files.atomic import atomic_output_file
from ..files.untrusted import brief, open_safetensors, parse_json

CODEBOOK_FORMAT = "armhubert-codebook/1"
MAX_UNITS = torch.iinfo(torch.int16).max  # unit sequences are int16
MAX_CODEBOOK_WIDTH = 8192  # features are at most a few thousand wide (HuBERT XL: 1280)
ASSIGN_BLOCK_FRAMES = 8192  # frames per distance block: (block, K) scores stay a few MB


@dataclass(frozen=True)
class Codebook:
    """K centroids of one layer's features and what they were fitted on.

    Attributes:
        centroids (`(K, D)` float32): the cluster centres.
        layer: the feature name they belong to, e.g. `layer_9` or `weighted`.
        representation: `superb`, `hidden`, `projected` or `weighted` (see `armhubert.features.encoding`).
        model: the model (folder, Hub id or preset) whose features were clustered.
        fitted_frames: how many frames the fit saw.
    """

    centroids: torch.Tensor
    layer: str
    representation: str
    model: str
    fitted_frames: int

    @property
    def num_units(self) -> int:
        return self.centroids.shape[0]

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]


def fit_codebook(features: torch.Tensor, num_units: int, seed: int = 0, iterations: int = 20) -> torch.Tensor:
    """(K, D) float32 k-means centroids of `features` (N, D): k-means++ seeds, then `iterations` Lloyd steps.

    Deterministic for a seed (on one machine and thread count). `num_units` is within the bounds of `--units`
    and the `units` extra is installed (`check_arguments` checks both before anything is read); raises UserError
    when there are fewer frames than units.
    """
    import faiss
    from sklearn.cluster import kmeans_plusplus
    from threadpoolctl import threadpool_limits

    if features.shape[0] < num_units:
        raise UserError(
            f"k-means needs at least K = {num_units} frames and the sample holds {features.shape[0]}; raise "
            "--units_sample_hours or lower --units"
        )
    data = features.detach().to("cpu", torch.float32).contiguous().numpy()
    # Seeding is K small products; with BLAS threads it took 15x longer on a busy 2-core machine (106 s vs 6.9 s).
    with threadpool_limits(limits=1, user_api="blas"):
        seeds, _ = kmeans_plusplus(data, num_units, random_state=seed)
    kmeans = faiss.Kmeans(
        data.shape[1], num_units, niter=iterations, seed=seed, max_points_per_centroid=data.shape[0], verbose=False
    )
    kmeans.train(data, init_centroids=seeds.astype("float32"))
    return torch.from_numpy(kmeans.centroids.copy())


def save_codebook(codebook: Codebook, path: str | os.PathLike) -> Path:
    """Write `codebook` to `path` (safetensors) atomically; returns the path."""
    if not bool(torch.isfinite(codebook.centroids).all()):
        raise UserError("the k-means centroids hold NaN or infinity (non-finite features?); nothing was saved")
    metadata = {
        "format": CODEBOOK_FORMAT,
        "layer": codebook.layer,
        "representation": codebook.representation,
        "model": codebook.model,
        "fitted_frames": codebook.fitted_frames,
    }
    path = Path(path)
    with atomic_output_file(path) as staging:
        # One metadata entry: safetensors writes several in a random order, and a file must not change between runs.
        save_file(
            {"centroids": codebook.centroids.to(torch.float32).contiguous()},
            staging,
            metadata={"armhubert": json.dumps(metadata)},
        )
    return path


class CodebookFile:
    """An open codebook file whose header passed `open_codebook`'s checks. `header` is its `Codebook` with the
    centroids on the meta device (their shape, no memory), for a caller to check against a model before their
    bytes are read; `read()` then reads them from this same open file, so what was checked is what is read."""

    def __init__(self, path: Path, opened: contextlib.ExitStack, handle, header: Codebook):
        self.path, self.opened, self.handle, self.header = path, opened, handle, header

    def read(self) -> Codebook:
        """The codebook with its centroids (float32), read once: the file is closed after. UserError when they
        cannot be read or are not finite."""
        with self.opened:  # the end of `open_safetensors`'s block: a failed read is its one refusal
            centroids = self.handle.get_tensor("centroids")
        if not bool(torch.isfinite(centroids).all()):
            raise UserError(f"codebook {self.path} holds NaN or infinite centroids; fit a new one with --units K")
        return dataclasses.replace(self.header, centroids=centroids.to(torch.float32))

    def __enter__(self) -> "CodebookFile":
        return self

    def __exit__(self, *exc_info) -> None:
        self.opened.close()  # a refusal in the caller's block is not the file's: it is not passed to the door


def open_codebook(path: str | os.PathLike) -> CodebookFile:
    """The door for a codebook file: a regular file safetensors reads (`open_safetensors`), of this tool's
    format, whose centroids' declared dtype and shape (K <= MAX_UNITS, D <= MAX_CODEBOOK_WIDTH) are checked
    before their bytes are read, its metadata bounded before it is built (a small header cannot make this read
    gigabytes); UserError otherwise."""
    if not os.path.exists(path):
        raise UserError(f"codebook {path} does not exist; give a codebook.safetensors written by --units K")
    with contextlib.ExitStack() as opened:  # a refused header closes the file
        handle = opened.enter_context(open_safetensors(path, f"codebook {path}"))
        metadata = parse_json((handle.metadata() or {}).get("armhubert", "{}"), f"codebook {path}'s metadata")
        shape = dtype = None
        if "centroids" in handle.keys():  # noqa: SIM118 -- safe_open has no __contains__
            declared = handle.get_slice("centroids")
            shape, dtype = tuple(declared.get_shape()), declared.get_dtype()
        problem = _header_problem(metadata, shape, dtype)
        if problem is not None:
            raise UserError(f"codebook {path} {problem}")
        header = _codebook(torch.empty(shape, device="meta"), metadata)
        return CodebookFile(Path(path), opened.pop_all(), handle, header)


def _header_problem(metadata, shape: tuple[int, ...] | None, dtype: str | None) -> str | None:
    """What makes a codebook file's header not one this tool writes (`shape` and `dtype` of its centroids,
    None when it has none), as the rest of a line `codebook PATH ...`; None when it is one."""
    if not isinstance(metadata, dict) or metadata.get("format") != CODEBOOK_FORMAT:
        return f"is not a codebook of this tool (format {CODEBOOK_FORMAT}); make one with --units K"
    if shape is None:
        return "holds no centroids; make one with --units K"
    if len(shape) != 2 or not 2 <= shape[0] <= MAX_UNITS or not 1 <= shape[1] <= MAX_CODEBOOK_WIDTH:
        return (
            f"holds centroids of shape {brief(shape)}; expected (K, D) with 2 <= K <= {MAX_UNITS} and D <= "
            f"{MAX_CODEBOOK_WIDTH}"
        )
    if dtype not in ("F16", "BF16", "F32", "F64"):
        return f"holds {brief(dtype)} centroids; expected floating-point ones"
    return None


def load_codebook(path: str | os.PathLike) -> Codebook:
    """The codebook saved at `path` (`open_codebook`, then its centroids); UserError for a missing file, another
    format or broken centroids."""
    with open_codebook(path) as codebook_file:
        return codebook_file.read()


def _codebook(centroids: torch.Tensor, metadata: dict) -> Codebook:
    fitted_frames = metadata.get("fitted_frames", 0)
    return Codebook(
        centroids=centroids,
        layer=_plain(metadata.get("layer")),
        representation=_plain(metadata.get("representation")),
        model=_plain(metadata.get("model")),
        fitted_frames=fitted_frames if isinstance(fitted_frames, int) and not isinstance(fitted_frames, bool) else 0,
    )


def _plain(value) -> str:
    """A metadata value as it may appear in a message: short printable text as it is, anything else as `brief`."""
    return value if isinstance(value, str) and value.isprintable() and len(value) <= 200 else brief(value)


def assign_units(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(T,) int16: the nearest centroid (squared L2) of each frame of `features` (T, D).

    Computed in float32 on the features' device, a block of frames at a time, as
    |c|^2 - 2 x.c (|x|^2 is the same for every centroid); ties go to the lower unit number.
    """
    centroids = centroids.to(device=features.device, dtype=torch.float32)
    squared_norms = (centroids * centroids).sum(dim=1)
    units = []
    for block in features.to(torch.float32).split(ASSIGN_BLOCK_FRAMES):
        scores = torch.addmm(squared_norms, block, centroids.T, alpha=-2.0)
        units.append(scores.argmin(dim=1))
    if not units:
        return torch.zeros(0, dtype=torch.int16)
    return torch.cat(units).to(torch.int16).cpu()


def deduplicate_runs(units: torch.Tensor) -> torch.Tensor:
    """`units` (T,) with each run of equal consecutive units collapsed to one (`1 1 5 5 5 2` -> `1 5 2`)."""
    return torch.unique_consecutive(units)
