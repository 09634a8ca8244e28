"""SUPERB with any saved ARMHuBERT-family model: an s3prl upstream expert, without copying files into s3prl.

    cd s3prl/s3prl   # s3prl's own folder, so that its downstream configs resolve
    python /path/to/this/repo/scripts/superb_upstream.py -m train -u armhubert_local -k MODEL_DIR -d asr -n armhubert_asr
    python /path/to/this/repo/scripts/superb_upstream.py --check MODEL_DIR    # what the expert returns (no s3prl needed)

The first form is s3prl's `run_downstream.py` with every one of its options; this script only adds
`armhubert_local` to `s3prl.hub`, with `-k` naming a model folder (from convert_checkpoint.py or
distill_trainer.py) or a Hub id. The expert returns what the original release's expert returned
(as the original release's upstream): `hidden_states` = the L projected (768-d) layer outputs for
ARM / Mask models or the L raw layer outputs for STaR models (the sets the published SUPERB numbers
used), and `last_hidden_state` = the release's `x` (last projection, or last layer), one frame per
320 samples.

From Python (e.g. s3prl's `S3PRLUpstream`-style code): `UpstreamExpert(MODEL_DIR)(list_of_1d_wavs)`.
"""

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from armhubert.cli import UserError, run_main
from armhubert.folders.model_folders import open_model_folder
from configuration_armhubert import SAMPLING_RATE
from modeling_armhubert import ARMHubertModel, superb_layer_outputs

HUB_NAME = "armhubert_local"
PROG = "superb_upstream.py"

S3PRL_REPO = "https://github.com/s3prl/s3prl"
CLONE_STEPS = f"git clone {S3PRL_REPO} && pip install -e ./s3prl, then run this from s3prl/s3prl"

try:  # s3prl's base class when s3prl imports (its runner treats every upstream the same way)
    from s3prl.upstream.interfaces import UpstreamBase as _UpstreamBase
except Exception:  # noqa: BLE001 -- missing, or broken by its dependencies: run() says how to fix it; --check needs no s3prl
    _UpstreamBase = nn.Module


def s3prl_import_fix(error: BaseException) -> str:
    """One line: why s3prl did not import and what to do about it."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    missing = getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None
    if missing == "tensorboardX" or "tensorboardX" in text:
        return f"s3prl needs tensorboardX ({text}): pip install tensorboardX"
    if missing and missing.split(".")[0] == "s3prl":
        return f"s3prl is not installed ({text}): {CLONE_STEPS} (the PyPI package lacks the downstream configs)"
    if "HfFolder" in text or ("Repository" in text and "huggingface_hub" in text):
        return (
            f"s3prl's runner imports names that huggingface_hub 1.x (which transformers 5 needs) no longer has ({text}): "
            "in your s3prl clone, delete HfFolder and Repository from the `from huggingface_hub import` line of "
            "s3prl/downstream/runner.py (they serve only its Hub upload)"
        )
    if "set_audio_backend" in text:
        return (
            f"s3prl calls torchaudio.set_audio_backend, which this torchaudio no longer has ({text}): in your s3prl clone "
            "delete those calls (grep -rn set_audio_backend s3prl/), and install the torchaudio built for your torch"
        )
    if missing:
        return f"s3prl needs {missing} ({text}): pip install {missing}"
    return f"cannot import s3prl ({type(error).__name__}: {text}); {CLONE_STEPS}"


def check_downstream_config(argv: Sequence[str]) -> None:
    """`-d TASK` without `-c` reads downstream/TASK/config.yaml from the working folder: s3prl's clone has it."""
    if any(flag in argv for flag in ("-c", "--config", "-e", "--past_exp")):
        return
    for flag in ("-d", "--downstream"):
        if flag in argv[:-1]:
            task = argv[argv.index(flag) + 1]
            if not (Path("downstream") / task / "config.yaml").is_file():
                raise UserError(
                    f"no downstream/{task}/config.yaml in {Path.cwd()}: s3prl's downstream configs come with its "
                    f"git repository, not the PyPI package: {CLONE_STEPS} (or pass -c CONFIG)"
                )


class UpstreamExpert(_UpstreamBase):
    """s3prl upstream: a list of unpadded 16 kHz waveforms in, padded per-layer features out."""

    def __init__(self, ckpt: str, model_config: str | None = None, **kwargs) -> None:
        super().__init__()
        folder = open_model_folder(ckpt, subfolder_option=None)  # -k takes one model's folder
        # layer_grad_scale is distillation-only: off, as it would damp a trainable upstream's (-f) lower layers
        self.model = folder.load(ARMHubertModel.from_pretrained, layer_grad_scale=False)
        self.model.eval()

    def get_downsample_rates(self, key: str) -> int:
        """Samples per frame of every output (320)."""
        return self.model.config.inputs_to_logits_ratio

    def forward(self, wavs: Sequence[torch.Tensor]) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """`hidden_states`: L tensors (batch, frames, width); `last_hidden_state` (batch, frames, width)."""
        if not wavs:
            raise ValueError("the upstream got an empty batch")
        lengths = torch.tensor([len(wav) for wav in wavs], device=wavs[0].device)
        padded = nn.utils.rnn.pad_sequence(list(wavs), batch_first=True)
        attention_mask = None
        if bool((lengths < padded.shape[1]).any()):
            attention_mask = (torch.arange(padded.shape[1], device=padded.device)[None, :] < lengths[:, None]).long()
        output = self.model(padded, attention_mask=attention_mask, output_hidden_states=True)
        return {
            "hidden_states": list(superb_layer_outputs(self.model.config, output)),
            "last_hidden_state": output.last_hidden_state,
        }


def armhubert_local(ckpt: str | None, *args, **kwargs) -> UpstreamExpert:
    """The `s3prl.hub` entry: `-u armhubert_local -k MODEL_DIR`."""
    if ckpt is None:
        raise UserError(f"-u {HUB_NAME} needs -k MODEL_DIR (a saved ARMHubert model folder or Hub id)")
    return UpstreamExpert(ckpt, *args, **kwargs)


def check(model_dir: str) -> None:
    """Run the expert on two random utterances and print what SUPERB would receive."""
    expert = UpstreamExpert(model_dir)
    wavs = [torch.randn(SAMPLING_RATE), torch.randn(3 * SAMPLING_RATE // 2)]
    with torch.no_grad():
        features = expert(wavs)
    hidden = features["hidden_states"]
    print(f"model: {model_dir}, downsample rate {expert.get_downsample_rates('hidden_states')}")
    print(f"hidden_states: {len(hidden)} x {tuple(hidden[0].shape)} (batch, frames, width)")
    print(f"last_hidden_state: {tuple(features['last_hidden_state'].shape)}")


def run(argv: Sequence[str] | None = None) -> int:
    """`--check MODEL_DIR`, or s3prl's `run_downstream.py` with `armhubert_local` added to `s3prl.hub`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--check"]:
        if len(argv) != 2:
            raise UserError(f"--check takes one argument: {PROG} --check MODEL_DIR")
        check(argv[1])
        return 0
    try:  # s3prl is optional: imported only to run it
        import s3prl.hub
        import s3prl.run_downstream
    except Exception as error:  # noqa: BLE001 -- ImportError, and AttributeError etc. raised by its dependencies while importing
        if argv[:1] in (["-h"], ["--help"]):
            print(__doc__.strip())
            print(
                f"\n(s3prl does not import: {s3prl_import_fix(error)}; then --help shows run_downstream.py's options.)"
            )
            return 0
        raise UserError(
            f"{s3prl_import_fix(error)}. Without s3prl, `{PROG} --check MODEL_DIR` shows what the expert returns"
        ) from None
    check_downstream_config(argv)
    setattr(s3prl.hub, HUB_NAME, armhubert_local)
    sys.argv = ["run_downstream.py", *argv]
    s3prl.run_downstream.main()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
