"""README.md and docs/: a contents list that matches the headings, links that resolve, no development
history, and commands that name real scripts, real options and importable names; the README's
offline ten-second path runs; README is a short guide whose set-up commands are the ones CI runs, and every
output a documented command writes is ignored by git."""

import importlib
import re
import shlex
import subprocess
import unicodedata

import pytest
from helpers import ROOT, load_script

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SET_UP_COMMANDS = [
    'pip install -e ".[dev]" && HF_HUB_OFFLINE=1 python distill_trainer.py --config conf/quickstart.yaml',
    "HF_HUB_OFFLINE=1 python -m pytest -q -n auto tests",
]
# Development history has no place in user documentation.
HISTORY = re.compile(
    r"did before|before this work|this work\b|as the \w+ issue asks|the speed issue|no gpu was available|"
    r"used to\b|previously|no longer|we (?:now|fixed|changed)|\bissue \d+|\bour (?:ci|machines?)\b|ci machines?",
    re.IGNORECASE,
)
COMMANDS = {  # script named in a command -> how the test loads it
    "distill_trainer.py": lambda: importlib.import_module("distill_trainer"),
    "convert_checkpoint.py": lambda: importlib.import_module("convert_checkpoint"),
    **{
        f"{path.parent.name}/{path.name}": (lambda name=path.stem: load_script(name))
        for folder in ("scripts", "benchmarks")
        for path in (ROOT / folder).glob("*.py")
    },
}


def text(page):
    return page.read_text(encoding="utf-8")


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"`|\*|\[|\]", "", heading.strip().lower())
    kept = "".join(char for char in heading if char in " -_" or unicodedata.category(char)[0] in "LN")
    return kept.replace(" ", "-")


def headings(page):
    outside_code = re.sub(r"```.*?```", "", text(page), flags=re.DOTALL)
    return [(len(marks), title) for marks, title in re.findall(r"^(#+) (.+)$", outside_code, flags=re.MULTILINE)]


def links(page):
    outside_code = re.sub(r"```.*?```", "", text(page), flags=re.DOTALL)
    return re.findall(r"\]\(([^)\s]+)\)", outside_code)


def code_blocks(page, language):
    return re.findall(rf"```{language}\n(.*?)```", text(page), flags=re.DOTALL)


def commands(page):
    """Each shell command of the page's bash blocks, continuation lines joined, comments dropped."""
    for block in code_blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line:
                yield line


def test_contents_list_every_section_and_every_anchor_resolves():
    sections = [title for level, title in headings(README) if level == 2]
    contents = text(README).split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"\]\(#([^)]+)\)", contents)
    assert [slug(title) for title in sections if title != "Contents"] == [
        anchor for anchor in listed if anchor in {slug(title) for title in sections}
    ]
    for page in PAGES:
        anchors = {slug(title) for _, title in headings(page)}
        for link in links(page):
            target, _, anchor = link.partition("#")
            if link.startswith("http"):
                continue
            path = (page.parent / target).resolve() if target else page
            assert path.exists(), f"{page.name}: {link}"
            if anchor and path.suffix == ".md":
                target_anchors = anchors if path == page else {slug(title) for _, title in headings(path)}
                assert anchor in target_anchors, f"{page.name}: {link}"


def test_get_a_model_comes_before_load_a_model_and_set_up_is_unchanged():
    sections = [title for level, title in headings(README) if level == 2]
    assert sections.index("Get a model") < sections.index("Load a model") < 4
    assert "sungnyun/ARMHuBERT" in text(README) and "tests/fixtures/armhubert-tiny.ckpt" in text(README)
    assert "No converted model is on the Hub today" in text(README)
    for command in SET_UP_COMMANDS:
        assert command in code_blocks(README, "bash")[0] + code_blocks(README, "bash")[1]


def test_ci_runs_the_two_set_up_commands_as_written_in_a_fresh_venv():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line.strip() for line in ci.splitlines()]
    venv = next(index for index, line in enumerate(lines) if line.startswith("python -m venv"))
    activate = next(index for index, line in enumerate(lines) if line.startswith("source") and "activate" in line)
    for command in SET_UP_COMMANDS:
        assert venv < activate < lines.index(command), command


def test_readme_is_a_short_guide_whose_first_screen_reaches_convert_distil_and_fine_tune():
    lines = text(README).splitlines()
    assert len(lines) <= 300
    first_screen = "\n".join(lines[:40])
    for anchor in ("#get-a-model", "#distil-your-own-student", "#distil-a-real-model", "#fine-tune"):
        assert f"]({anchor})" in first_screen, anchor


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_no_development_history(page):
    found = [match.group(0) for match in HISTORY.finditer(text(page))]
    assert not found, f"{page.name}: {found}"


def test_every_command_names_a_real_script_and_real_options(capsys):
    """Each `python X.py ... --flag` of README and docs: the script exists and its --help lists the flag."""
    flags = {}
    for page in PAGES:
        for command in commands(page):
            words = shlex.split(command.split("&&")[-1])
            scripts = [word for word in words if word.endswith(".py")]
            if not scripts or "python" not in " ".join(words):
                continue
            script = re.sub(r"^.*/(scripts/[^/]+)$", r"\1", scripts[0])
            assert script in COMMANDS, f"{page.name}: {command}"
            flags.setdefault(script, set()).update(word.split("=")[0] for word in words if word.startswith("--"))
    assert {"convert_checkpoint.py", "scripts/evaluate.py", "scripts/quickstart.py"} <= set(flags)
    for script, used in flags.items():
        module = COMMANDS[script]()
        try:
            module.main(["--help"])  # argparse exits; superb_upstream.py without s3prl prints its own help
        except SystemExit as exit:
            assert exit.code == 0
        usage = capsys.readouterr().out
        missing = sorted(flag for flag in used if not re.search(rf"{re.escape(flag)}\b", usage))
        assert not missing, f"{script} does not take {missing}"


def test_python_examples_import_what_exists():
    for page in PAGES:
        for block in code_blocks(page, "python"):
            for module_name, names in re.findall(r"^from ([\w.]+) import ([\w, ]+)", block, flags=re.MULTILINE):
                module = importlib.import_module(module_name)
                for name in names.replace(" ", "").split(","):
                    assert hasattr(module, name), f"{page.name}: from {module_name} import {name}"


def test_the_ten_second_path_runs(tmp_path, capsys):
    """The README's fixture conversion and quickstart, with the output folder moved to a temporary one."""
    block = text(README).split("**Try the whole path in seconds**", 1)[1].split("```bash\n", 1)[1].split("```")[0]
    convert, quickstart = [shlex.split(line.replace("HF_HUB_OFFLINE=1 ", "")) for line in block.strip().splitlines()]
    folder = str(tmp_path / "armhubert-tiny")
    convert = [folder if word == "converted/armhubert-tiny" else word for word in convert]
    quickstart = [folder if word == "converted/armhubert-tiny" else word for word in quickstart]
    assert convert[:2] == ["python", "convert_checkpoint.py"] and quickstart[:2] == ["python", "scripts/quickstart.py"]
    assert (
        COMMANDS["convert_checkpoint.py"]().main(
            [str(ROOT / word) if word.startswith("tests/") else word for word in convert[2:]]
        )
        == 0
    )
    assert COMMANDS["scripts/quickstart.py"]().main(quickstart[2:] + ["--num-utterances", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {folder}" in out and "112,944 parameters" in out


# Options and recipe keys whose value is a file or folder a command writes.
OUTPUT_OPTIONS = ("--output_dir", "--output-dir", "--output", "--output_json", "--local-dir", "output_dir")


def written_paths(command):
    """The relative paths `command` writes into (its output options' values), as the page gives them."""
    words = shlex.split(command)
    for index, word in enumerate(words):
        option, equals, value = word.partition("=")
        if option in OUTPUT_OPTIONS and equals:
            yield value
        elif word in OUTPUT_OPTIONS and index + 1 < len(words):
            yield words[index + 1]


def test_every_output_a_documented_command_writes_is_ignored_by_git():
    paths = {
        path
        for page in PAGES
        for command in commands(page)
        for path in written_paths(command)
        if not path.startswith(("/", "$", "~")) and "/path/" not in path
    }
    paths |= {"runs/quickstart", "runs/benchmark"}  # the main job's and the benchmark's default folders
    assert {"feats", "units", "out/ctc", "converted/armhubert-960h", "downloads", "armhubert-960h.onnx"} <= paths
    # data/ is the bundled corpus: regenerating it (make_corpus.py --output_dir data) rewrites tracked files.
    paths.discard("data")
    # A path without a file suffix is a folder (git's "dir/" patterns match folders only).
    paths = {path if "." in path.rsplit("/", 1)[-1] else f"{path.rstrip('/')}/" for path in paths}
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *sorted(paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    not_ignored = [line.split("\t")[-1] for line in result.stdout.splitlines() if line.startswith("::")]
    assert not not_ignored, f"documented outputs git would show as untracked: {not_ignored}"
