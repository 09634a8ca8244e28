"""Hostile names in model cards: every user-supplied string shows as written, never as markup or code.

Cards are rendered as the Hub does (CommonMark with tables and raw HTML allowed) and checked for what a
reader would get: no image, no link, no code span broken open, and usage code that parses to one call
whose argument is the user's string.
"""

import ast
import re
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT, TINY_CKPT
from huggingface_hub import ModelCard
from markdown_it import MarkdownIt

from armhubert.convert.folders import convert_checkpoint, convert_folder
from armhubert.folders.cards import (
    DistillationFacts,
    classification_card,
    ctc_card,
    distilled_card,
    inline_code,
    markdown_text,
    python_string,
    table_row,
)

IMAGE = "<img src=x onerror=alert(1)>"
LINK = "[click me](javascript:alert(1))"
HOSTILE = [
    IMAGE,
    LINK,
    "a`b``c`",
    "`x` | y",
    'out/a",**{"x":__import__("os").system("touch P")})#',
    "it's \\ & &amp; *bold* _it_ # ~~s~~ !",
    "two\nlines\r\tand a tab",
]
RENDER = MarkdownIt("commonmark", {"html": True}).enable("table")


def html_text(text):
    """`text` as markdown-it writes plain text into HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def one_line(text):
    return re.sub(r"[\x00-\x1f]+", " ", text)


def rendered(card_text):
    return RENDER.render(ModelCard(card_text).text)


def assert_inert(html):
    """No element the hostile strings could have made."""
    assert "<img" not in html and "<b>" not in html and 'href="javascript' not in html


def code_blocks(card_text):
    return re.findall(r"```python\n(.*?)```", card_text, re.S)


def string_arguments(code):
    """{function name: first string argument} of every call in `code`; fails if it does not parse."""
    calls = {}
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "?")
            keywords = {keyword.arg: keyword.value for keyword in node.keywords}
            argument = node.args[0] if node.args else keywords.get("model")
            calls[name] = ast.literal_eval(argument) if isinstance(argument, ast.Constant) else None
    return calls


@pytest.mark.parametrize("text", HOSTILE)
def test_each_escape_shows_the_text_as_written_where_it_lands(text):
    paragraph = RENDER.render(f"Trained on {markdown_text(text)} here.\n")
    assert paragraph == f"<p>Trained on {html_text(one_line(text))} here.</p>\n"
    heading = RENDER.render(f"# {markdown_text(text)}\n")
    assert heading == f"<h1>{html_text(one_line(text).strip())}</h1>\n"
    table = RENDER.render("| | |\n|---|---|\n" + table_row("data", f"the local data {inline_code(text)}") + "\n")
    assert f"<td>the local data <code>{html_text(one_line(text))}</code></td>" in table
    assert ast.literal_eval(python_string(text)) == text
    assert_inert(paragraph + heading + table)


def test_python_strings_keep_the_cards_double_quotes_where_no_quote_needs_escaping():
    assert python_string("out/my-run_1.5+b") == '"out/my-run_1.5+b"'
    assert python_string("C:\\runs\\x") == '"C:\\\\runs\\\\x"'
    assert ast.literal_eval(python_string("it's")) == "it's"


def test_distilled_card_with_a_hostile_output_dir_and_data_source():
    output_dir = 'out/a",**{"x":__import__("os").system("touch P")})#'
    facts = DistillationFacts(
        output_dir=output_dir,
        teacher="random-hubert",
        recipe="masking",
        student_layout="armhubert-960h",
        parameters=1000,
        data_source="data/my`corpus`` | x",
        train_splits=["train`clean", IMAGE],
        train_utterances=4,
        train_seconds=10.0,
        steps=2,
        final_train_loss=1.0,
        final_eval_loss=None,
    )
    text = distilled_card(facts)
    (code,) = code_blocks(text)
    calls = string_arguments(code)
    assert calls["from_pretrained"] == output_dir and calls["pipeline"] == output_dir
    assert not {"system", "__import__"} & set(calls)  # the folder name stayed a string
    html = rendered(text)
    assert_inert(html)
    assert "<code>data/my`corpus`` | x</code>" in html  # a backtick or pipe does not break the code span
    assert html_text("train`clean, " + IMAGE) in html
    assert ModelCard(text).data.license == "apache-2.0"  # one front matter for every card


def test_fine_tuned_cards_with_hostile_data_folders_and_split_names():
    train_dir = "data/Libri`Speech/train | <b>"
    ctc = ctc_card(IMAGE, None, "armhubert-960h", "my`data", LINK, IMAGE, 3, {"eval_wer": 0.5, "eval_cer": 0.1}, 2)
    classifier = classification_card(
        "out/sid", "me/encoder", None, train_dir, "dev`set", ["a", "b"], 3, {"eval_accuracy": 1.0}, 2
    )
    for text in (ctc, classifier):
        assert_inert(rendered(text))
        (code,) = code_blocks(text)
        assert string_arguments(code)["pipeline"] in (IMAGE, "out/sid")
    assert f"<h1>{html_text(IMAGE)}</h1>" in rendered(ctc)
    assert html_text(LINK) in rendered(ctc) and "<code>my`data</code>" in rendered(ctc)
    assert f"<code>{html_text(train_dir)}</code>" in rendered(classifier) and "<code>dev`set</code>" in rendered(
        classifier
    )
    assert ModelCard(classifier).data.eval_results[0].dataset_name == train_dir


@pytest.mark.parametrize("name", [IMAGE, LINK])
def test_a_hostile_checkpoint_name_is_the_title_as_text(tmp_path, name):
    checkpoint = tmp_path / f"{name}.ckpt"
    shutil.copy(TINY_CKPT, checkpoint)
    card = (convert_checkpoint(checkpoint, tmp_path / "out") / "README.md").read_text()
    html = rendered(card)
    assert_inert(html)
    assert f"<h1>{html_text(name)}</h1>" in html and f"<code>{html_text(name)}.ckpt</code>" in html


def test_a_hostile_repository_folder_name_is_the_root_title_as_text(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(TINY_CKPT, source / "tiny-run.ckpt")
    repository = convert_folder(source, tmp_path / IMAGE)
    html = rendered((repository / "README.md").read_text())
    assert_inert(html)
    assert f"<h1>{html_text(IMAGE)}</h1>" in html
    assert '<a href="tiny-run/README.md"><code>tiny-run</code></a>' in html


def test_the_trained_card_module_loads_no_data_libraries():
    probe = "import sys, armhubert.folders.cards; print(sorted({'datasets', 'soundfile', 'armhubert.speech.librispeech'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
