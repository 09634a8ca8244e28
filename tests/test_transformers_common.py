"""transformers' own common model and config tests (`ModelTesterMixin`, `ConfigTester`) on every model class.

The tests are the installed transformers version's, from its sdist on PyPI (`transformers_sdist`: fetched into
the user's cache once, never copied here). Each test class below runs them on one layout of tiny models: the
ARM layout (reusing layers, projection heads, a mask embedding) and the STaR layout (no reuse, no heads), with
a right-padded attention mask (the model refuses other masks). Skips say why; everything else must pass.
"""

import contextlib
import unittest
import warnings

import pytest
import torch
from helpers import tiny_config
from transformers_sdist import FetchError, load

from configuration_armhubert import ARMHubertConfig
from modeling_armhubert import ARMHubertForCTC, ARMHubertForSequenceClassification, ARMHubertModel

try:
    with warnings.catch_warnings():  # transformers' own pytest marks (flash_attn_test, ...), registered in its repo
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        common = load()
except FetchError as error:  # one failing test with the reason, not a collection error that stops the suite
    FETCH_ERROR = str(error)
    common = None

    def test_transformers_common_tests_available():
        pytest.fail(FETCH_ERROR)


SAMPLES = 3200  # 9 frames of the tiny models' CNN (total stride 320, receptive field 400)


class ARMHubertModelTester:
    """Tiny configs and inputs for the common tests: (B, N) raw audio, the last row right-padded."""

    batch_size = 3
    is_training = True

    def __init__(self, parent, **overrides):
        self.parent = parent
        self.overrides = overrides
        self.config = config = self.get_config()
        self.hidden_size = config.hidden_size
        self.num_hidden_layers = config.num_hidden_layers
        self.num_attention_heads = config.num_attention_heads
        self.seq_length = int(ARMHubertModel._get_feat_extract_output_lengths(self, torch.tensor(SAMPLES)))

    def get_config(self) -> ARMHubertConfig:
        """Dropout-free (the tests compare outputs of separate calls), SpecAugment that can fire on 9 frames."""
        fields = dict(
            hidden_dropout=0.0,
            activation_dropout=0.0,
            attention_dropout=0.0,
            feat_proj_dropout=0.0,
            final_dropout=0.0,
            mask_time_length=2,
            vocab_size=8,
            num_labels=3,
        )
        return tiny_config(**{**fields, **self.overrides})

    def prepare_config_and_inputs_for_common(self):
        torch.manual_seed(0)
        input_values = torch.randn(self.batch_size, SAMPLES)
        attention_mask = torch.ones(self.batch_size, SAMPLES, dtype=torch.long)
        attention_mask[-1, SAMPLES - 700 :] = 0
        return self.get_config(), {"input_values": input_values, "attention_mask": attention_mask}


if common is not None:
    from parameterized import parameterized  # the dev extra installs it

    modeling_common = common.test_modeling_common
    ConfigTester = common.test_configuration_common.ConfigTester
    TASK_MODELS = (ARMHubertForCTC, ARMHubertForSequenceClassification)

    class ARMHubertCommonTest(modeling_common.ModelTesterMixin, unittest.TestCase):
        """The ARM layout: layer 2 reuses the map of layer 1; projection heads and a mask embedding."""

        all_model_classes = (ARMHubertModel, *TASK_MODELS)
        config_overrides = dict(num_hidden_layers=2, layer_reuses_attention_map=[False, True])
        test_resize_embeddings = False  # no token embeddings: the input is raw audio

        def setUp(self):
            self.model_tester = ARMHubertModelTester(self, **self.config_overrides)
            self.config_tester = ConfigTester(
                self, config_class=ARMHubertConfig, has_text_modality=False, **self.config_overrides
            )

        def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
            """The mixin's inputs, with labels for the task models (it knows only transformers' own class names)."""
            inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels)
            if return_labels and model_class is ARMHubertForCTC:
                inputs["labels"] = torch.tensor([[1, 2, 3], [4, 5, -100], [6, 7, 1]])
            elif return_labels and model_class is ARMHubertForSequenceClassification:
                inputs["labels"] = torch.tensor([0, 2, 1])
            return inputs

        @contextlib.contextmanager
        def only(self, *model_classes):
            """Run a mixin test on some of the model classes (an instance attribute over the class's tuple)."""
            self.all_model_classes = model_classes
            try:
                yield
            finally:
                del self.all_model_classes

        def test_config(self):
            self.config_tester.run_common_tests()

        # The bare encoder has no loss: transformers leaves out of its training tests the base models it lists in
        # MODEL_MAPPING_NAMES, which a model registered with `AutoModel.register` is not. The heads train.
        def test_training(self):
            with self.only(*TASK_MODELS):
                super().test_training()

        def test_training_gradient_checkpointing(self):
            with self.only(*TASK_MODELS):
                super().test_training_gradient_checkpointing()

        def test_training_gradient_checkpointing_use_reentrant_false(self):
            with self.only(*TASK_MODELS):
                super().test_training_gradient_checkpointing_use_reentrant_false()

        def test_training_gradient_checkpointing_use_reentrant_true(self):
            """Refused in one line where layers reuse maps (reentrant checkpointing would lose their gradients:
            tests/test_attention_reuse.py); run as transformers runs it elsewhere."""
            if not any(self.model_tester.config.layer_reuses_attention_map):
                with self.only(*TASK_MODELS):
                    return super().test_training_gradient_checkpointing_use_reentrant_true()
            for model_class in self.all_model_classes:
                model = model_class(self.model_tester.get_config())
                with self.assertRaises(ValueError) as refused:
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
                self.assertEqual(len(str(refused.exception).splitlines()), 1)
                self.assertIn("use_reentrant=False", str(refused.exception))

        def test_attention_outputs(self):
            """Per class: the bare encoder of a model with projection heads adds two kinds of hidden states
            (`hidden_states`, `projected_hidden_states`) when asked, the task models one."""
            heads = self.model_tester.config.has_projection_heads
            for model_class in self.all_model_classes:
                with self.subTest(model_class.__name__), self.only(model_class):
                    self.model_tester.num_hidden_states_types = 2 if heads and model_class is ARMHubertModel else 1
                    super().test_attention_outputs()

        @unittest.skip(reason="The input is raw audio: there are no input embeddings to get or set.")
        def test_model_get_set_embeddings(self):
            pass

        @parameterized.expand(modeling_common.TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION)
        def test_eager_matches_sdpa_inference(self, name, dtype, padding_side, *flags):
            if padding_side == "left":
                self.skipTest(reason="Left-padded audio is refused in one line (a mask is read as lengths).")
            modeling_common._test_eager_matches_sdpa_inference(self, name, dtype, padding_side, *flags)

    class STaRHubertCommonTest(ARMHubertCommonTest):
        """The STaR layout: every layer computes its map, no projection heads, no mask embedding."""

        config_overrides = dict(
            num_hidden_layers=2,
            layer_reuses_attention_map=[False, False],
            projection_head_size=None,
            use_mask_embedding=False,
        )
