"""Per-layer fidelity of a runtime or precision against PyTorch fp32: cosine per frame and relative error."""

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel

from .graph import onnx_session, run_onnx, run_torch


@dataclass
class LayerFidelity:
    """How close one layer's output is to the reference: cosine per frame (mean and worst) and
    relative error ||x - ref|| / ||ref|| over the whole layer."""

    name: str
    mean_cosine: float
    min_cosine: float
    relative_error: float

    def passes(self, min_cosine: float, max_relative_error: float) -> bool:
        return self.mean_cosine >= min_cosine and self.relative_error <= max_relative_error


def layer_fidelity(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> list[LayerFidelity]:
    """Per-layer fidelity of `candidate` to `reference` (outputs by name, as `run_onnx` returns).

    Layers: hidden_states[0..L] ("hidden 0" is the encoder input), projected_hidden_states[0..L-1]
    ("projected 1".."projected L") and last_hidden_state ("last"). Raises AssertionError on a shape
    mismatch (a broken graph, not a precision matter).
    """
    layers = []
    for name, want in reference.items():
        got = candidate[name]
        if got.shape != want.shape:
            raise AssertionError(f"{name}: shape {got.shape}, reference {want.shape}")
        if name == "last_hidden_state":
            layers.append(_fidelity("last", want, got))
            continue
        first = 0 if name == "hidden_states" else 1
        label = "hidden" if name == "hidden_states" else "projected"
        layers.extend(_fidelity(f"{label} {first + i}", want[i], got[i]) for i in range(len(want)))
    return layers


def _fidelity(name: str, want: np.ndarray, got: np.ndarray) -> LayerFidelity:
    """Frame vectors: (..., D) flattened to (frames, D); float64 sums."""
    want = want.reshape(-1, want.shape[-1]).astype(np.float64)
    got = got.reshape(-1, got.shape[-1]).astype(np.float64)
    norms = np.linalg.norm(want, axis=-1) * np.linalg.norm(got, axis=-1)
    cosine = (want * got).sum(-1) / np.maximum(norms, 1e-30)
    relative = np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30)
    return LayerFidelity(name, float(cosine.mean()), float(cosine.min()), float(relative))


def max_abs_differences(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], frames: np.ndarray | None = None
) -> dict[str, float]:
    """Largest |candidate - reference| per output (the fp32 parity measure), over the real frames only when
    `frames` ((B, T) bool, True for a real frame) is given: a padded row's frames past its end are not
    outputs anyone reads (the frame mask drops them), and two runtimes fill them differently."""
    differences = {}
    for name, want in reference.items():
        if candidate[name].shape != want.shape:
            raise AssertionError(f"{name}: shape {candidate[name].shape}, reference {want.shape}")
        difference = np.abs(candidate[name] - want)  # (B, T, D), or (L, B, T, D) for the per-layer outputs
        if frames is not None:
            difference = difference[..., frames, :]
        differences[name] = float(difference.max())
    return differences


def concatenate_frames(outputs: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Outputs of several utterances (each as `run_onnx` returns) joined along the frame axis."""
    return {name: np.concatenate([output[name] for output in outputs], axis=-2) for name in outputs[0]}


def bfloat16_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A bf16-weight copy of `model`: what `from_pretrained(..., dtype=torch.bfloat16)` loads."""
    return copy.deepcopy(model).to(torch.bfloat16).eval()


def run_autocast(model: PreTrainedModel, audio: torch.Tensor) -> dict[str, np.ndarray]:
    """`run_torch` of the fp32 model under CPU bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return run_torch(model, audio)


def fidelity_report(
    model: PreTrainedModel,
    audios: Sequence[np.ndarray],
    int8_graphs: dict[str, bytes],
    threads: int | None = None,
) -> dict[str, list[LayerFidelity]]:
    """Per-layer fidelity to PyTorch fp32 on `audios` (1-D 16 kHz arrays, one utterance per call) of
    each int8 graph (label -> bytes), PyTorch bf16 weights and PyTorch fp32 under bf16 autocast."""
    sessions = {label: onnx_session(graph, threads) for label, graph in int8_graphs.items()}
    half = bfloat16_copy(model)
    runs = {
        **{label: (lambda audio, s=session: run_onnx(s, audio.numpy())) for label, session in sessions.items()},
        "bf16 weights": lambda audio: run_torch(half, audio),
        "bf16 autocast": lambda audio: run_autocast(model, audio),
    }
    reference, results = [], {label: [] for label in runs}
    for samples in audios:
        audio = torch.from_numpy(np.asarray(samples, dtype=np.float32))[None]
        reference.append(run_torch(model, audio))
        for label, run in runs.items():
            results[label].append(run(audio))
    expected = concatenate_frames(reference)
    return {label: layer_fidelity(expected, concatenate_frames(outputs)) for label, outputs in results.items()}
