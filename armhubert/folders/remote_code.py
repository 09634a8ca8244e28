"""What a saved model folder records so that it opens as remote code: Auto classes and its own pipeline.

The folder's code is the five root files (`configuration_armhubert.py`, `attention_armhubert.py`,
`ops_armhubert.py`, `modeling_armhubert.py`, `pipeline_armhubert.py`). `save_pretrained` copies the model file
and what it imports, the first four; `ship_pipeline` adds the pipeline file, which the model does not import. This
module also fills `config.auto_map` and `config.custom_pipelines` to point into them.
"""

import shutil
import sys
from os import PathLike
from pathlib import Path

from transformers import PretrainedConfig

from configuration_armhubert import ARMHubertConfig
from modeling_armhubert import ARMHubertModel
from pipeline_armhubert import (
    ENCODER_PIPELINE,
    FEATURE_EXTRACTION_TASK,
    HEAD_PIPELINES,
    ARMHubertFeatureExtractionPipeline,
)


def ship_pipeline(folder: str | PathLike) -> None:
    """Copy `pipeline_armhubert.py` into a folder that `save_pretrained` gave this model's code (where
    `config.custom_pipelines` points); a folder without `modeling_armhubert.py` (a plain HuBERT) is left as it is.

    Every command that saves a model folder calls it after `save_pretrained` (`armhubert.convert.folders`,
    `armhubert.training.guarded_trainer.save_trained_model`): transformers copies only a model file's relative imports,
    and the model does not import its pipeline.
    """
    folder = Path(folder)
    if (folder / f"{_module_name(ARMHubertModel)}.py").is_file():
        source = Path(sys.modules[ARMHubertFeatureExtractionPipeline.__module__].__file__)
        shutil.copyfile(source, folder / source.name)


def _module_name(cls: type) -> str:
    """The file (module) name under which a folder's remote code holds `cls`, e.g. "modeling_armhubert"."""
    return cls.__module__.split(".")[-1]


def add_remote_code_entries(config: PretrainedConfig, model_class: type | None = None) -> PretrainedConfig:
    """Let a folder saved with `config` open through every Auto class and its own pipeline.

    `save_pretrained` records only the saving class in `config.auto_map`; this adds them all
    (AutoConfig, AutoModel, AutoModelForCTC, AutoModelForAudioClassification), so that on a converted
    or distilled encoder folder `AutoModelForCTC.from_pretrained(folder, trust_remote_code=True,
    vocab_size=...)` works. `config.custom_pipelines` gets exactly one of this model's pipelines, the one
    of the saved class (`model_class`, else `config.architectures[0]`): `pipeline(model=folder,
    trust_remote_code=True)` without a task takes the single custom pipeline (transformers 5 infers a
    task from nothing else offline), so a CTC folder gives speech recognition, a classifier folder
    audio classification and an encoder folder the audio feature pipeline. Call it before saving;
    returns the config.
    """
    models = _module_name(ARMHubertModel)
    pipelines = _module_name(ARMHubertFeatureExtractionPipeline)
    config.auto_map = {
        **(getattr(config, "auto_map", None) or {}),
        "AutoConfig": f"{_module_name(ARMHubertConfig)}.ARMHubertConfig",
        "AutoModel": f"{models}.ARMHubertModel",
        "AutoModelForCTC": f"{models}.ARMHubertForCTC",
        "AutoModelForAudioClassification": f"{models}.ARMHubertForSequenceClassification",
    }
    saved_class = (
        model_class.__name__ if model_class is not None else (getattr(config, "architectures", None) or [""])[0]
    )
    task, pipeline_class, auto_class = HEAD_PIPELINES.get(saved_class, ENCODER_PIPELINE)
    ours = {FEATURE_EXTRACTION_TASK, *(entry[0] for entry in HEAD_PIPELINES.values())}
    others = {
        name: entry for name, entry in (getattr(config, "custom_pipelines", None) or {}).items() if name not in ours
    }
    config.custom_pipelines = {
        **others,
        task: {"impl": f"{pipelines}.{pipeline_class}", "pt": [auto_class], "type": "audio"},
    }
    return config
