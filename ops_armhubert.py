"""Operations the ARMHuBERT layers call besides attention: gradient scaling, modules that keep tensors
derived from their weights, the channels-last and FFT convolutions, Whisper's log-mel spectrogram, and the
checks of model inputs that would otherwise fail deep inside the model (or be silently misread).

Remote code beside `modeling_armhubert.py`, which imports it as `ops` (so `save_pretrained` ships it); apart
from `attention_armhubert.py`, which holds attention-map reuse and the attention paths and needs none of this.
How and why: docs/speed.md ("Work done once, not per call") and docs/numerics.md ("Gradient scaling").
"""

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from transformers.audio_utils import mel_filter_bank

try:  # loaded as remote code from a model folder
    from .configuration_armhubert import MEL_HOP, MEL_WINDOW, SAMPLING_RATE, ARMHubertConfig
except ImportError:  # installed as a top-level module
    from configuration_armhubert import MEL_HOP, MEL_WINDOW, SAMPLING_RATE, ARMHubertConfig


# --------------------------------------------------------------------------------------------------
# Gradient scaling (`feature_grad_mult`, `layer_grad_scale`)


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by `scale` in the backward pass."""

    @staticmethod
    def forward(ctx, tensor, scale):
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_gradient(tensor: Tensor, scale: float) -> Tensor:
    if scale == 1.0 or not tensor.requires_grad:
        return tensor
    return _ScaleGradient.apply(tensor, scale)


def split_layer_gradient(output: Tensor, index: int, num_layers: int, mode: str | bool) -> tuple[Tensor, Tensor]:
    """`config.layer_grad_scale` on layer `index`'s output (B, T, D): (head input, next layer's input), both
    `output` in the forward pass, gradients scaled as `mode` says (docs/numerics.md, "Gradient scaling")."""
    if not mode:
        return output, output
    remaining = num_layers - index
    if mode == "release":
        keep = remaining / (remaining + 1)
        continuing = scale_gradient(output, keep)
        return scale_gradient(continuing, 1.0 - keep), continuing
    keep = (remaining - 1) / remaining
    return scale_gradient(output, 1.0 - keep), scale_gradient(output, keep)


# --------------------------------------------------------------------------------------------------
# Derived weights and convolutions


class DerivedWeightsModule(nn.Module):
    """Keeps tensors derived from its parameters (re-laid-out kernels, an FFT spectrum) between inference
    calls, while the parameters keep their version counters; autograd, compiling, `train()` and `eval()`
    derive afresh (docs/speed.md, "Work done once, not per call")."""

    # module -> {name: (stamp, weak references to the sources, tensor)}: never saved, copied or pickled.
    _caches = weakref.WeakKeyDictionary()

    def derived(self, name: str, sources: tuple[Tensor, ...], make: Callable[[], Tensor]) -> Tensor:
        """`make()`, or the tensor it returned last time if the `sources` parameters are unchanged."""
        autograd = torch.is_grad_enabled() and any(source.requires_grad for source in sources)
        if autograd or torch.compiler.is_compiling() or any(source.is_inference() for source in sources):
            return make()
        stamp = tuple((source.data_ptr(), source._version, source.dtype, source.device) for source in sources)
        cache = self._caches.setdefault(self, {})
        hit = cache.get(name)
        if hit is not None and hit[0] == stamp and all(ref() is source for ref, source in zip(hit[1], sources)):
            return hit[2]
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor: usable outside inference mode too
            value = make()
        cache[name] = (stamp, tuple(weakref.ref(source) for source in sources), value)
        return value

    def channels_last_kernel(self, conv: nn.Conv1d) -> Tensor:
        """`conv.weight` (C_out, C_in / groups, k) as a (C_out, C_in / groups, 1, k) channels-last tensor."""
        if parametrize.is_parametrized(conv, "weight"):
            sources = tuple(conv.parametrizations.weight.parameters())  # e.g. weight norm's g and v
        else:
            sources = (conv.weight,)
        return self.derived(
            "kernel", sources, lambda: conv.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        )

    def train(self, mode: bool = True) -> "DerivedWeightsModule":
        self._caches.pop(self, None)
        return super().train(mode)


def conv1d_channels_last(conv: nn.Conv1d, hidden_states: Tensor, kernel: Tensor | None = None) -> Tensor:
    """`conv` on (B, C, 1, N) channels-last input, channels-last output (docs/speed.md: time-major).
    `kernel`: `conv.weight` laid out for `F.conv2d` (`channels_last_kernel`), unused by the matmul cases."""
    width, stride, padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    if conv.in_channels == 1 and padding == 0:
        # The waveform: a matmul over its strided frames is channels-last at once (a convolution's output
        # would need a transposing copy of the CNN's largest tensor).
        frames = hidden_states[:, 0, 0].unfold(-1, width, stride)  # (B, T, k)
        return F.linear(frames, conv.weight[:, 0], conv.bias).transpose(1, 2).unsqueeze(2)
    if width == 1 and stride == 1 and padding == 0 and conv.groups == 1:
        # A 1 x 1 convolution: one matmul on the (B, 1, N, C) view (oneDNN's reference path is slow).
        output = F.linear(hidden_states.permute(0, 2, 3, 1), conv.weight[:, :, 0], conv.bias)
        return output.permute(0, 3, 1, 2)
    if kernel is None:
        kernel = conv.weight.unsqueeze(2)
    output = F.conv2d(hidden_states, kernel, conv.bias, stride=(1, stride), padding=(0, padding), groups=conv.groups)
    return output.contiguous(memory_format=torch.channels_last)  # a no-op unless the input was odd


def kernel_spectrum(conv: nn.Conv1d, fft_size: int) -> Tensor:
    """(F * G, C/G, C/G) complex, F = fft_size // 2 + 1: the flipped kernel's spectrum of a grouped `conv`
    (C channels, G groups), per frequency and group, as `convolve_fft` multiplies it."""
    group_width = conv.in_channels // conv.groups  # not conv.weight.shape: reading it derives the weight
    bins = fft_size // 2 + 1
    spectrum = torch.fft.rfft(conv.weight.flip(-1), n=fft_size)  # (C, C/G, F)
    spectrum = spectrum.view(conv.groups, group_width, group_width, bins).permute(3, 0, 1, 2)
    return spectrum.reshape(bins * conv.groups, group_width, group_width)


def convolve_fft(conv: nn.Conv1d, hidden_states: Tensor, spectrum: Tensor, fft_size: int) -> Tensor:
    """(B, T, D) -> (B, T', D), T' = T + 2 * (K // 2) - K + 1: `conv` (K taps, padding K // 2) by overlap-save
    over blocks of `fft_size` frames, with `spectrum` = `kernel_spectrum(conv, fft_size)`. Equal to the direct
    convolution to float32 rounding; 3.5x faster at 30 s for the releases' 128 taps (docs/speed.md)."""
    batch, time, width = hidden_states.shape
    kernel, groups, size = conv.kernel_size[0], conv.groups, fft_size
    step, bins, padding = size - kernel + 1, size // 2 + 1, kernel // 2
    outputs = time + 2 * padding - kernel + 1
    blocks = -(-outputs // step)
    padded = F.pad(hidden_states, (0, 0, padding, blocks * step + kernel - 1 - time - padding))
    spectra = torch.fft.rfft(padded.unfold(1, size, step), n=size)  # (B, blocks, D, F)
    spectra = spectra.view(batch * blocks, groups, width // groups, bins).permute(3, 1, 2, 0)
    product = torch.bmm(spectrum, spectra.reshape(bins * groups, width // groups, batch * blocks))
    product = product.view(bins, width, batch, blocks).permute(2, 3, 1, 0)  # (B, blocks, D, F)
    result = torch.fft.irfft(product, n=size)[..., kernel - 1 :]  # (B, blocks, D, step): the valid outputs
    return result.transpose(2, 3).reshape(batch, blocks * step, width)[:, :outputs] + conv.bias


class ConvolutionByFFT(DerivedWeightsModule):
    """A module whose `conv` (a weight-normed grouped Conv1d over time, K taps, padding K // 2) `convolve`s
    (B, T, D) -> (B, T', D), T' = T + 2 * (K // 2) - K + 1: by FFT in inference on more than one block of
    `fft_size` frames (3.5x faster at 30 s for the releases' 128 taps, same numbers to float32 rounding),
    else directly: training, `torch.compile` graphs, half precision, short inputs and `fft = False`."""

    conv: nn.Conv1d
    fft_size: int
    fft: bool

    def _use_fft(self, hidden_states: Tensor) -> bool:
        if not self.fft or torch.compiler.is_compiling():
            return False
        # One block's small per-frequency products cost more than the direct convolution of so few frames.
        step = self.fft_size - self.conv.kernel_size[0] + 1
        if hidden_states.shape[1] + 1 <= step or hidden_states.dtype not in (torch.float32, torch.float64):
            return False
        weights = self.conv.parametrizations.weight.parameters()
        return not torch.is_grad_enabled() or not (hidden_states.requires_grad or any(w.requires_grad for w in weights))

    def _convolve_fft(self, hidden_states: Tensor) -> Tensor:
        """By overlap-save (`convolve_fft`), with the kernel's spectrum kept between inference calls."""
        conv, size = self.conv, self.fft_size
        sources = tuple(conv.parametrizations.weight.parameters())
        spectrum = self.derived("spectrum", sources, lambda: kernel_spectrum(conv, size))
        return convolve_fft(conv, hidden_states, spectrum, size)

    def _convolve_direct(self, hidden_states: Tensor) -> Tensor:
        """As a channels-last convolution: a contiguous (B, T, D) input is already channels-last."""
        kernel = self.channels_last_kernel(self.conv)
        channels_last = hidden_states.transpose(1, 2).unsqueeze(2)
        return conv1d_channels_last(self.conv, channels_last, kernel).squeeze(2).transpose(1, 2)

    def convolve(self, hidden_states: Tensor) -> Tensor:
        """(B, T, D) -> (B, T', D), by FFT where `_use_fft` says it pays."""
        return (self._convolve_fft if self._use_fft(hidden_states) else self._convolve_direct)(hidden_states)


def mel_filters(num_mel_bins: int) -> Tensor:
    """(num_mel_bins, 201) float32: Whisper's slaney mel filters over the 400-sample window's frequencies."""
    bins = MEL_WINDOW // 2 + 1
    filters = mel_filter_bank(bins, num_mel_bins, 0.0, SAMPLING_RATE / 2, SAMPLING_RATE, "slaney", "slaney")
    return torch.tensor(filters, dtype=torch.float32).T


def log_mel_spectrogram(input_values: Tensor, window: Tensor, filters: Tensor) -> Tensor:
    """(B, N) -> (B, num_mel_bins, N // 160) float32, as Whisper's feature extractor: |STFT|^2 (the Hann
    `window`, hop 160, centred, last frame dropped) -> mel `filters` -> log10 (floor 1e-10) -> at most 8 below
    each utterance's maximum -> (x + 4) / 4."""
    spectrum = torch.stft(input_values.float(), MEL_WINDOW, MEL_HOP, window=window, return_complex=True)[..., :-1]
    mel = filters @ spectrum.abs().square()
    log_mel = mel.clamp(min=1e-10).log10()
    log_mel = torch.maximum(log_mel, log_mel.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log_mel + 4.0) / 4.0


# --------------------------------------------------------------------------------------------------
# Input checks: one line for inputs that would fail deep inside the model or be silently misread


def check_model_inputs(
    model: nn.Module, input_values: Tensor, attention_mask: Tensor | None, mask_time_indices: Tensor | None
) -> None:
    """The inputs of `ARMHubertModel.forward` (`model`): input_values (B, N) floating point, N within the
    model's receptive field, window and positions; attention_mask (B, N) (`check_attention_mask`);
    mask_time_indices (B, T) for a model with a mask embedding."""
    if not torch.is_tensor(input_values) or not input_values.is_floating_point():
        given = input_values.dtype if torch.is_tensor(input_values) else type(input_values).__name__
        raise ValueError(
            f"input_values must be a floating-point tensor of raw 16 kHz audio, got {given}. "
            "Convert with torch.as_tensor(audio, dtype=torch.float32)."
        )
    if input_values.dim() != 2:
        raise ValueError(
            f"input_values must have shape (batch, samples), got {tuple(input_values.shape)}. "
            "Add a batch axis with input_values[None] for one utterance; average stereo channels first."
        )
    if input_values.shape[0] == 0:
        raise ValueError("input_values has a batch of 0 rows; pass at least one utterance.")
    window = model.config.frontend_window_samples
    if window is not None and input_values.shape[1] > window:
        raise ValueError(
            f"input_values has {input_values.shape[1]} samples per row, more than this model's "
            f"{window}-sample window ({window / SAMPLING_RATE:.0f} s); cut the audio into windows."
        )
    frames = int(model._num_frames(input_values.shape[1]))
    if model.config.position_embeddings == "absolute" and frames > model.config.max_position_embeddings:
        raise ValueError(
            f"input_values gives {frames} frames, more than this model's {model.config.max_position_embeddings} "
            f"positions ({model.config.max_position_embeddings * model.config.inputs_to_logits_ratio / SAMPLING_RATE:.0f} s); "
            "cut the audio into shorter pieces."
        )
    field = model.config.receptive_field
    if input_values.shape[1] < field:
        raise ValueError(
            f"input_values has {input_values.shape[1]} samples per row, fewer than the {field}-sample "
            f"receptive field of the feature encoder ({field / SAMPLING_RATE * 1000:.0f} ms at 16 kHz). Pad or drop it."
        )
    if attention_mask is not None:
        check_attention_mask(attention_mask, input_values.shape, field, model.training)
    if mask_time_indices is not None:
        if model.mask_emb is None:
            raise ValueError("mask_time_indices needs a model built with use_mask_embedding=True.")
        if tuple(mask_time_indices.shape) != (input_values.shape[0], frames):
            raise ValueError(
                f"mask_time_indices has shape {tuple(mask_time_indices.shape)}, expected (batch, frames) = "
                f"{(input_values.shape[0], frames)} for this input."
            )


def check_attention_mask(attention_mask: Tensor, shape: tuple[int, int], receptive_field: int, training: bool) -> None:
    """A (B, N) mask of 0/1, right-padded, at least `receptive_field` samples long (it is read as a length per
    row), for input_values of `shape` (B, N); `training` is the model's mode. One comparison with the right-padded mask of the same lengths finds other values and left or inner
    padding, in one device sync; none when compiling or training on an accelerator (docs/gpu.md)."""
    if not torch.is_tensor(attention_mask) or attention_mask.dtype.is_complex:
        given = attention_mask.dtype if torch.is_tensor(attention_mask) else type(attention_mask).__name__
        raise ValueError(
            f"attention_mask must be a tensor of 0/1 (integer or bool), got {given}; pass the feature "
            "extractor's attention_mask or (input_values != padding).long()."
        )
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_values has "
            f"{tuple(shape)}; they must match (1 = real sample, 0 = padding)."
        )
    if torch.compiler.is_compiling():
        return  # reading the mask's values would break the graph: eager calls check them
    if training and attention_mask.device.type != "cpu":
        return  # training batches come from collators; a read would wait for the device every step
    lengths = (attention_mask != 0).sum(-1)
    right_padded = torch.arange(shape[1], device=attention_mask.device) < lengths[:, None]
    wrong, shortest = torch.stack([(attention_mask != right_padded).any().long(), lengths.min()]).tolist()
    if wrong:
        values = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
        if values.numel():
            raise ValueError(
                f"attention_mask holds values {sorted(set(values.tolist()))[:5]}; it must hold only "
                "1 (real sample) and 0 (padding)."
            )
        row = int((attention_mask != right_padded).any(-1).nonzero()[0, 0])
        raise ValueError(
            f"attention_mask row {row} has padding (0) before real samples (1); pad on the right "
            "(each row's real samples first, then zeros), as the feature extractor does."
        )
    if shortest < receptive_field:
        raise ValueError(
            f"attention_mask marks only {shortest} real samples in some row, fewer than the "
            f"{receptive_field}-sample receptive field. Drop such rows."
        )


def check_ctc_labels(labels: Tensor, logit_lengths: Tensor, config: ARMHubertConfig) -> None:
    """Clear errors for labels that are not (B, U) integer ids, ids outside `config.vocab_size`, and
    transcripts longer than their audio's `logit_lengths` (B,) frames (unless `config.ctc_zero_infinity`)."""
    batch = logit_lengths.shape[0]
    if not torch.is_tensor(labels) or labels.is_floating_point() or labels.dim() != 2 or labels.shape[0] != batch:
        given = f"shape {tuple(labels.shape)} {labels.dtype}" if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(
            f"CTC labels must be an integer tensor of shape (batch, tokens) = ({batch}, U) for these inputs, "
            f"got {given}; give one row of token ids per utterance, padded with -100."
        )
    vocab_size, blank = config.vocab_size, config.pad_token_id
    ignored = (labels == -100) | (labels == blank)
    outside = ~ignored & ((labels < 0) | (labels >= vocab_size))
    if bool(outside.any()):
        bad = sorted(set(labels[outside].tolist()))[:5]
        raise ValueError(
            f"labels hold ids {bad} outside the vocabulary [0, {vocab_size}); pad label rows with -100 and "
            "encode transcripts with the tokenizer the model was built for."
        )
    target_lengths = (~ignored).sum(-1).to(logit_lengths.device)
    too_long = target_lengths > logit_lengths
    if bool(too_long.any()) and not config.ctc_zero_infinity:
        row = int(too_long.nonzero()[0, 0])
        raise ValueError(
            f"labels row {row} has {int(target_lengths[row])} tokens but its audio gives only "
            f"{int(logit_lengths[row])} frames ({config.inputs_to_logits_ratio} samples each); CTC needs "
            "at least one frame per token. Drop such utterances or set config.ctc_zero_infinity=True."
        )
