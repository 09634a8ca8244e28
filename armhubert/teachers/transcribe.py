"""Whisper's decoder on any encoder's output: greedy transcription and its word error rate.

Used to judge a Whisper teacher (read from CTranslate2) and a compressed Whisper encoder in its place:
the decoder reads whatever `encoder` gives, (B, 1500, d_model) for a 30 s window. Greedy decoding after
the forced prefix `<|startoftranscript|><|notimestamps|>` (English-only checkpoints), as measured in the
project's real-teacher figures.
"""

import re
from collections.abc import Callable, Sequence

import jiwer
import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor, WhisperForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from configuration_armhubert import SAMPLING_RATE

from .ctranslate2 import END, NO_TIMESTAMPS, START, special_token_ids

# Spoken forms the bundled transcripts use for what Whisper writes in digits or abbreviations.
SPOKEN = {"mr": "mister", "mrs": "missus", "dr": "doctor"} | dict(
    zip("0 1 2 3 4 5 6 7 8 9 10".split(), "zero one two three four five six seven eight nine ten".split())
)


def normalize_text(text: str) -> str:
    """Lower case, punctuation dropped (hyphens split words), abbreviations and digits 0-10 spelled out."""
    words = re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()
    return " ".join(SPOKEN.get(word.strip("'"), word.strip("'")) for word in words)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER of normalised texts (jiwer): errors over reference words."""
    return jiwer.wer([normalize_text(t) for t in references], [normalize_text(t) or "<empty>" for t in hypotheses])


def log_mel(feature_extractor: WhisperFeatureExtractor, audios: Sequence[np.ndarray]) -> Tensor:
    """(B, n_mels, 3000) log-mel of each 16 kHz waveform padded (or cut) to Whisper's 30 s window."""
    features = feature_extractor(list(audios), sampling_rate=SAMPLING_RATE, return_tensors="pt")
    return features.input_features


@torch.no_grad()
def greedy_decode(
    model: WhisperForConditionalGeneration,
    tokenizer: PreTrainedTokenizerFast,
    encoder_states: Tensor,
    max_new_tokens: int = 120,
) -> list[str]:
    """Greedy transcripts of encoder output (B, T, d_model), stopping at `<|endoftext|>` or `max_new_tokens`."""
    ids = special_token_ids(tokenizer)
    batch = encoder_states.shape[0]
    tokens = torch.tensor([[ids[START], ids[NO_TIMESTAMPS]]] * batch)
    encoder_outputs = BaseModelOutput(last_hidden_state=encoder_states.to(model.dtype))
    done = torch.zeros(batch, dtype=torch.bool)
    generated, past, step_input = [], None, tokens
    for _ in range(max_new_tokens):
        output = model(encoder_outputs=encoder_outputs, decoder_input_ids=step_input, cache=past, use_cache=True)
        past = output.cache
        token = output.logits[:, -1].argmax(-1)
        token = torch.where(done, torch.full_like(token, ids[END]), token)
        generated.append(token)
        done |= token == ids[END]
        if done.all():
            break
        step_input = token[:, None]
    rows = torch.stack(generated, 1).tolist()
    return [tokenizer.decode([t for t in row if t < ids[END]]).strip() for row in rows]


def student_encoder(student: torch.nn.Module) -> Callable[[Sequence[np.ndarray]], Tensor]:
    """`transcribe`'s `encoder` for an ARMHubert mirror of a Whisper encoder: raw audio in, (B, 1500, d) out."""

    def encode(audios):
        batch = torch.nn.utils.rnn.pad_sequence([torch.as_tensor(audio) for audio in audios], batch_first=True)
        return student(batch.to(student.device)).last_hidden_state

    return encode


def transcribe(
    model: WhisperForConditionalGeneration,
    tokenizer: PreTrainedTokenizerFast,
    audios: Sequence[np.ndarray],
    encoder: Callable[[Sequence[np.ndarray]], Tensor] | None = None,
    batch_size: int = 5,
) -> list[str]:
    """Transcripts of 16 kHz waveforms; `encoder(audios) -> (B, T, d)` replaces Whisper's own encoder when given."""
    if encoder is None:
        extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
        whisper_encoder = model.get_encoder()

        def encoder(batch):
            return whisper_encoder(log_mel(extractor, batch).to(model.dtype)).last_hidden_state

    texts = []
    for start in range(0, len(audios), batch_size):
        with torch.no_grad():
            states = encoder(audios[start : start + batch_size])
        texts += greedy_decode(model, tokenizer, states)
    return texts
