"""Read a CTranslate2 Whisper folder (what faster-whisper users hold) into transformers' Whisper classes.

A CTranslate2 model folder has `model.bin` (plain little-endian binary, no pickle), `config.json` and
`tokenizer.json`. `model.bin` is: u32 format version, u16-length spec name ("WhisperSpec"), u32 spec
revision, u32 variable count; per variable a u16-length name, u8 rank, rank x u32 dims, u8 dtype, u32
byte count and the bytes; then u32 alias count and pairs of u16-length names. Every count and size is
checked against the file before anything is allocated, so a hostile file costs its own size at most
(the file is memory-mapped, each weight copied once into its tensor); what is wrong with a file is one
refusal naming it (`read_variables`, the door of `model.bin`; `whisper_tokenizer`, that of `tokenizer.json`).

Mapping notes: CTranslate2 fuses self-attention Q, K, V into `linear_0` ([3d, d]) and cross-attention
K, V into `linear_1` ([2d, d]); transformers' Whisper has no K bias, and CTranslate2's K bias can be
dropped exactly (it adds one constant to every logit of a query, which softmax ignores).
"""

import math
import mmap
import struct
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

from ..cli import UserError, first_line
from ..files.untrusted import Limit, check_regular_file, read_bounded
from ..files.weights import check_state_fits

MODEL_FILE = "model.bin"
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
VARIABLES = Limit(100_000, "{what} declares {count} variables (at most {most}); the file is corrupt")
RANK = Limit(4, "{what}: variable {key!r} has rank {count} (at most {most}); the file is corrupt")
# Whisper's special tokens (the same ids in every English-only and multilingual checkpoint's tokenizer.json
# are looked up by name, not assumed).
START, NO_TIMESTAMPS, END = "<|startoftranscript|>", "<|notimestamps|>", "<|endoftext|>"
SPECIAL_TOKENS = (START, NO_TIMESTAMPS, END)
TOKENIZER_FILE, TOKENIZER_BYTES = "tokenizer.json", 32 * 1024 * 1024  # Whisper's is 2-3 MB


def is_ctranslate2_whisper(folder: str | PathLike) -> bool:
    """Whether `folder` is a CTranslate2 model folder (a `model.bin` whose spec is WhisperSpec)."""
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        return False
    with open(path, "rb") as stream:
        head = stream.read(4 + 2 + 64)
    if len(head) < 6:
        return False
    length = struct.unpack_from("<H", head, 4)[0]
    return head[6 : 6 + length].rstrip(b"\0") == b"WhisperSpec"


class _Reader:
    """Bounded little-endian reads over a byte buffer. The first read past the end, or a name that is not UTF-8,
    is kept as `problem`; from then on every read gives 0 or "" (and `take` None), so that the parse stops at
    its next look at `problem` and the file is refused once (`read_variables`)."""

    def __init__(self, buffer):
        self.buffer, self.offset, self.problem = buffer, 0, None

    def take(self, size: int) -> int | None:
        """The offset of the next `size` bytes, consumed; None after a problem."""
        if self.problem is None and self.offset + size > len(self.buffer):
            self.problem = (
                f"truncated or corrupt CTranslate2 file (a field at byte {self.offset} runs past its end); download "
                "or convert the model again"
            )
        if self.problem is not None:
            return None
        start, self.offset = self.offset, self.offset + size
        return start

    def number(self, code: str) -> int:
        start = self.take(struct.calcsize(code))
        return 0 if start is None else struct.unpack_from("<" + code, self.buffer, start)[0]

    def text(self) -> str:
        size = self.number("H")
        start = self.take(size)
        if start is None:
            return ""
        try:
            return bytes(self.buffer[start : start + size]).rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            self.problem = f"a name at byte {start} is not UTF-8; not a CTranslate2 file"
            return ""


def _parse(reader: _Reader, name: str, variables: dict[str, np.ndarray]) -> str | None:
    """Read a whole `model.bin` into `variables` ({name: array}); what is wrong with the file, or None."""
    version, spec, _revision = reader.number("I"), reader.text(), reader.number("I")
    if reader.problem is not None:
        return reader.problem
    if spec != "WhisperSpec":
        return f"it holds a CTranslate2 {spec or 'unnamed'} model (format {version}), not Whisper"
    for _ in range(VARIABLES.check(reader.number("I"), name)):
        key = reader.text()
        dims = [reader.number("I") for _ in range(RANK.check(reader.number("B"), name, key=key))]
        dtype, size = reader.number("B"), reader.number("I")
        start = reader.take(size)  # within the file: nothing is allocated before the checks below
        if reader.problem is not None:
            return reader.problem
        if dtype not in DTYPES:
            return f"variable {key!r} has unknown dtype code {dtype}; the file is corrupt"
        if size != math.prod(dims) * np.dtype(DTYPES[dtype]).itemsize:
            return f"variable {key!r} declares {size} bytes for shape {dims}; the file is corrupt"
        variables[key] = np.frombuffer(reader.buffer, DTYPES[dtype], math.prod(dims), start).reshape(dims)
    for _ in range(reader.number("I") if reader.offset < len(reader.buffer) else 0):
        alias, target = reader.text(), reader.text()
        if reader.problem is not None:
            return reader.problem
        if target not in variables:
            return f"alias {alias!r} names a missing variable {target!r}; the file is corrupt"
        variables[alias] = variables[target]
    return None


def read_variables(path: str | PathLike) -> dict[str, np.ndarray]:
    """{name: array} of a CTranslate2 `model.bin` (float16 weights stay float16; aliases resolved): the door of
    `model.bin` files, one UserError for whatever is wrong with one (`_parse` says what).

    The arrays view a private memory map of the file: copy what you keep (`torch.tensor(array)`).
    """
    name, variables = str(path), {}
    check_regular_file(path, name)  # a FIFO named model.bin would block the open
    try:
        with open(path, "rb") as stream:
            buffer = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as error:  # ValueError: mmap of an empty file
        problem = f"cannot be read ({error}); expected a CTranslate2 model.bin"
    else:
        problem = _parse(_Reader(buffer), name, variables)
    if problem is not None:
        raise UserError(f"{name}: {problem}")
    return variables


def _layer_count(variables: dict, prefix: str) -> int:
    return sum(1 for key in variables if key.startswith(prefix) and key.endswith("/ffn/linear_0/weight"))


def whisper_config(variables: dict[str, np.ndarray]) -> WhisperConfig:
    """The WhisperConfig the weights' shapes imply (sizes, layers, heads, vocabulary, positions).

    KeyError for a missing variable, ValueError / TypeError / IndexError for a misshapen one.
    """
    width, mels, _ = variables["encoder/conv1/weight"].shape
    vocabulary = variables["decoder/embeddings/weight"].shape[0]
    # Whisper's special-token ids, where the vocabulary has them (else 0: tiny random test models).
    special = {"pad_token_id": 50256, "bos_token_id": 50256, "eos_token_id": 50256, "decoder_start_token_id": 50257}
    return WhisperConfig(
        **{key: value if value < vocabulary else 0 for key, value in special.items()},
        vocab_size=vocabulary,
        num_mel_bins=int(mels),
        d_model=int(width),
        encoder_layers=_layer_count(variables, "encoder/"),
        decoder_layers=_layer_count(variables, "decoder/"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
    )


def _norm(prefix: str) -> dict[str, str]:
    return {"weight": f"{prefix}/gamma", "bias": f"{prefix}/beta"}


def _linear(prefix: str) -> dict[str, str]:
    return {"weight": f"{prefix}/weight", "bias": f"{prefix}/bias"}


def _split(array: np.ndarray, parts: int, index: int) -> np.ndarray:
    """Part `index` of `parts` of a fused projection (uneven parts of a misshapen one: `check_state_fits` names it)."""
    return np.array_split(np.atleast_1d(array), parts, axis=0)[index]


def _state_dict(variables: dict[str, np.ndarray], config: WhisperConfig) -> dict[str, torch.Tensor]:
    """transformers' Whisper state dict (float32) from CTranslate2's variables."""
    tensors: dict[str, np.ndarray] = {}

    def put(target: str, names: dict[str, str]):
        for field, source in names.items():
            tensors[f"{target}.{field}"] = variables[source]

    def fused(target: str, source: str, parts: int, index: int, bias: bool = True):
        tensors[f"{target}.weight"] = _split(variables[f"{source}/weight"], parts, index)
        if bias:
            tensors[f"{target}.bias"] = _split(variables[f"{source}/bias"], parts, index)

    for side in ("encoder", "decoder"):
        layers = config.encoder_layers if side == "encoder" else config.decoder_layers
        for i in range(layers):
            ours, theirs = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            attention = f"{theirs}/self_attention"
            for index, projection in enumerate(("q_proj", "k_proj", "v_proj")):
                fused(f"{ours}.self_attn.{projection}", f"{attention}/linear_0", 3, index, projection != "k_proj")
            put(f"{ours}.self_attn.out_proj", _linear(f"{attention}/linear_1"))
            put(f"{ours}.self_attn_layer_norm", _norm(f"{attention}/layer_norm"))
            put(f"{ours}.fc1", _linear(f"{theirs}/ffn/linear_0"))
            put(f"{ours}.fc2", _linear(f"{theirs}/ffn/linear_1"))
            put(f"{ours}.final_layer_norm", _norm(f"{theirs}/ffn/layer_norm"))
            if side == "decoder":
                cross = f"{theirs}/attention"
                put(f"{ours}.encoder_attn.q_proj", _linear(f"{cross}/linear_0"))
                fused(f"{ours}.encoder_attn.k_proj", f"{cross}/linear_1", 2, 0, bias=False)
                fused(f"{ours}.encoder_attn.v_proj", f"{cross}/linear_1", 2, 1)
                put(f"{ours}.encoder_attn.out_proj", _linear(f"{cross}/linear_2"))
                put(f"{ours}.encoder_attn_layer_norm", _norm(f"{cross}/layer_norm"))
        put(f"model.{side}.layer_norm", _norm(f"{side}/layer_norm"))
        tensors[f"model.{side}.embed_positions.weight"] = variables[f"{side}/position_encodings/encodings"]
    for conv in ("conv1", "conv2"):
        put(f"model.encoder.{conv}", _linear(f"encoder/{conv}"))
    tensors["model.decoder.embed_tokens.weight"] = variables["decoder/embeddings/weight"]
    return {key: torch.tensor(np.asarray(value, dtype=np.float32)) for key, value in tensors.items()}


def whisper_from_ctranslate2(folder: str | PathLike) -> WhisperForConditionalGeneration:
    """transformers' `WhisperForConditionalGeneration` (float32, eval mode) with a CTranslate2 folder's weights."""
    variables = read_variables(Path(folder) / MODEL_FILE)
    try:  # the config the shapes imply, the model it describes (on no memory) and the weights that fill it
        config = whisper_config(variables)
        with torch.device("meta"):
            model = WhisperForConditionalGeneration(config)
        state = _state_dict(variables, config)
    except (KeyError, ValueError, TypeError, IndexError, ZeroDivisionError) as error:
        problem = f"missing {error}" if isinstance(error, KeyError) else f"misshapen ({first_line(error)[:120]})"
        raise UserError(f"{folder}: not a complete CTranslate2 Whisper model: {problem}; the file is corrupt") from None
    expected = {key: value.shape for key, value in model.state_dict().items() if key != "proj_out.weight"}
    shapes = {key: value.shape for key, value in state.items()}  # proj_out is tied to the token embedding
    check_state_fits(shapes, expected, f"{folder}: the CTranslate2 weights", "Whisper", "the file is corrupt")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.eval()


def whisper_tokenizer(folder: str | PathLike) -> PreTrainedTokenizerFast:
    """The folder's `tokenizer.json` as a fast tokenizer (decoding and special-token ids): the door of
    `tokenizer.json`, one UserError for a file that is missing, larger than TOKENIZER_BYTES, not a tokenizers
    tokenizer or one without Whisper's special tokens; `special_token_ids` trusts what it returns.

    Read whole by `read_bounded` (a FIFO or device is refused before it is opened).
    """
    path = Path(folder) / TOKENIZER_FILE
    data = read_bounded(path, str(path), TOKENIZER_BYTES, "Whisper's is 2-3 MB")
    try:
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(data.decode("utf-8")))
    except Exception as error:  # noqa: BLE001 -- UnicodeDecodeError, or the tokenizers library's plain Exception
        problem = first_line(error)[:120]
    else:
        missing = [token for token in SPECIAL_TOKENS if token not in tokenizer.get_vocab()]
        problem = f"it lacks Whisper's special tokens {missing}" if missing else None
    if problem is not None:
        raise UserError(f"{path} is not a Whisper tokenizer.json: {problem}")
    return tokenizer


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Ids of the start, no-timestamps and end tokens of a tokenizer `whisper_tokenizer` read."""
    return {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
