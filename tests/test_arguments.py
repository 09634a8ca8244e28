"""The one door for argument values (`armhubert.cli.check_fields`): a field's `Literal` choices and `bounds`
are enforced on the command line and for Python callers alike, NaN and infinity never pass."""

from dataclasses import dataclass, field
from typing import Literal

import pytest
from hostile import refusal

from armhubert.cli import CommandParser, UserError, above, at_least, between, check_fields, run_main
from armhubert.distill.recipe import DistillTrainingArguments
from armhubert.features.plan import ExtractionArguments, check_arguments


@dataclass
class Toy:
    count: int = field(default=1, metadata={"help": "How many.", "bounds": at_least(1)})
    rate: float = field(default=0.5, metadata={"help": "How fast.", "bounds": above(0, 1)})
    share: float | None = field(default=None, metadata={"bounds": between(0, 1)})
    scale: float = 1.0  # no bounds: any finite number
    mode: Literal["fast", "slow"] = "fast"
    parts: list[Literal["a", "b"]] = field(default_factory=lambda: ["a"])
    sizes: list[int] = field(default_factory=lambda: [1], metadata={"bounds": at_least(1)})


@dataclass
class ToyChild(Toy):
    count: int = field(default=2, metadata={"help": "Redeclared: the base class's bounds still hold."})


def toy_main(argv: list[str]) -> int:
    return run_main("toy", lambda words: CommandParser([Toy], prog="toy").parse_into_dataclasses(words), argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--count", "0"], "toy: error: --count must be an integer >= 1, got 0"),
        (["--rate", "0"], "toy: error: --rate must be a finite number in (0, 1], got 0.0"),
        (["--rate", "nan"], "toy: error: --rate must be a finite number in (0, 1], got nan"),
        (["--share", "1.5"], "toy: error: --share must be a finite number in [0, 1], got 1.5"),
        (["--scale", "inf"], "toy: error: --scale must be a finite number, got inf"),
        (["--scale=-inf"], "toy: error: --scale must be a finite number, got -inf"),
        (["--mode", "medium"], "toy: error: --mode: invalid choice: 'medium' (choose from 'fast', 'slow')"),
        (["--parts", "a", "c"], "toy: error: --parts: invalid choice: 'c' (choose from 'a', 'b')"),
        (["--sizes", "4", "0"], "toy: error: --sizes must be an integer >= 1, got 0"),
    ],
)
def test_a_declared_bound_or_choice_refuses_a_command_line_value_in_one_line(capsys, argv, message):
    assert refusal(capsys, toy_main, *argv) == message


def test_the_same_declarations_refuse_a_python_caller_s_values():
    for arguments, message in [
        (Toy(count=0), "--count must be an integer >= 1, got 0"),
        (Toy(count=True), "--count must be an integer >= 1, got True"),
        (Toy(rate=float("inf")), r"--rate must be a finite number in \(0, 1\], got inf"),
        (Toy(rate="0.5"), r"--rate must be a finite number in \(0, 1\], got '0.5'"),
        (Toy(scale=float("nan")), "--scale must be a finite number, got nan"),
        (Toy(mode="medium"), "--mode must be one of fast, slow, got 'medium'"),
        (Toy(parts=["a", "c"]), "--parts must be one of a, b, got 'c'"),
        (ToyChild(count=0), "--count must be an integer >= 1, got 0"),
    ]:
        with pytest.raises(UserError, match=f"^{message}$"):
            check_fields(arguments)
    check_fields(Toy(count=3, rate=1, share=0, parts=["b", "a"], sizes=[1, 2]))  # in range: nothing to say
    with pytest.raises(UserError, match=r"^share must be a finite number in \[0, 1\] or null, got 2$"):
        check_fields(Toy(share=2), prefix="", null="null")  # a recipe's keys: no dashes; null for an optional one


def test_valid_values_parse_and_the_help_names_the_bounds(capsys):
    parser = CommandParser([Toy], prog="toy")
    (toy,) = parser.parse_into_dataclasses(["--count", "3", "--rate", "1", "--parts", "b", "a", "--sizes", "2"])
    assert (toy.count, toy.rate, toy.parts, toy.sizes) == (3, 1.0, ["b", "a"], [2])
    help_text = " ".join(parser.format_help().split())
    assert "How many. (>= 1)" in help_text and "How fast. (in (0, 1])" in help_text


def test_the_recipe_and_the_features_options_go_through_the_same_door(tmp_path):
    with pytest.raises(UserError, match=r"^mask_prob must be a finite number in \[0, 1\], got nan$"):
        DistillTrainingArguments(output_dir=str(tmp_path), mask_prob=float("nan"))
    # Used to be a TypeError traceback (text compared with a number); now one line naming the key.
    with pytest.raises(UserError, match=r"^mask_prob must be a finite number in \[0, 1\], got 'high'$"):
        DistillTrainingArguments(output_dir=str(tmp_path), mask_prob="high")
    with pytest.raises(UserError, match=r"^learning_rate must be a finite number > 0, got -1$"):
        DistillTrainingArguments(output_dir=str(tmp_path), learning_rate=-1)
    arguments = ExtractionArguments(input="in", output_dir="out", preset="armhubert-960h", shard_mb=float("inf"))
    with pytest.raises(UserError, match=r"^--shard_mb must be a finite number in \(0, 1e\+06\], got inf$"):
        check_arguments(arguments)
    arguments = ExtractionArguments(input="in", output_dir="out", preset="armhubert-960h", format="parquet")
    with pytest.raises(UserError, match="^--format must be one of safetensors, arrow, got 'parquet'$"):
        check_arguments(arguments)
