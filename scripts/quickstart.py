"""Build a model from a preset, encode bundled utterances, print shapes, size and speed.

    HF_HUB_OFFLINE=1 python scripts/quickstart.py [--preset armhubert-960h] [--split dev-clean]

Runs offline on the synthetic corpus in `data/LibriSpeech` (random weights unless `--model` names a
converted or trained model folder).
"""

import argparse
import sys
import time
from pathlib import Path

import soundfile
import torch
from transformers import AutoModel, Wav2Vec2FeatureExtractor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configuration_armhubert import PRESETS, ARMHubertConfig  # noqa: E402
from modeling_armhubert import ARMHubertModel  # noqa: E402


def read_utterances(split_dir, limit):
    files = sorted(Path(split_dir).rglob("*.flac"))[:limit]
    if not files:
        raise SystemExit(f"quickstart: no .flac files under {split_dir}; expected LibriSpeech/<split>/<spk>/<chap>/*.flac")
    audio = []
    for path in files:
        samples, rate = soundfile.read(path, dtype="float32")
        if rate != 16000:
            raise SystemExit(f"quickstart: {path} is {rate} Hz; the models take 16 kHz audio")
        audio.append(samples)
    return files, audio


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="armhubert-960h", choices=sorted(PRESETS))
    parser.add_argument("--model", help="a saved model folder to load instead of a random preset")
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "LibriSpeech"))
    parser.add_argument("--split", default="dev-clean")
    parser.add_argument("--num-utterances", type=int, default=8)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.model:
        model = AutoModel.from_pretrained(args.model, trust_remote_code=True)
    else:
        model = ARMHubertModel(ARMHubertConfig.from_preset(args.preset))
    model.eval()
    files, audio = read_utterances(Path(args.data_dir) / args.split, args.num_utterances)
    extractor = Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=True)
    batch = extractor(audio, sampling_rate=16000, padding=True, return_tensors="pt")

    start = time.perf_counter()
    with torch.inference_mode():
        output = model(batch.input_values, attention_mask=batch.attention_mask, output_hidden_states=True)
    elapsed = time.perf_counter() - start

    seconds = sum(len(a) for a in audio) / 16000
    name = args.model or args.preset
    print(f"model: {name}, {sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"input: {len(files)} utterances from {args.split}, {seconds:.1f} s of audio, batch {tuple(batch.input_values.shape)}")
    print(f"last_hidden_state: {tuple(output.last_hidden_state.shape)}")
    print(f"hidden_states: {len(output.hidden_states)} x {tuple(output.hidden_states[-1].shape)}")
    if output.projected_hidden_states is not None:
        print(f"projected_hidden_states: {len(output.projected_hidden_states)} x {tuple(output.projected_hidden_states[0].shape)}")
    print(f"time: {elapsed:.2f} s ({seconds / elapsed:.0f} s of audio per second, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
