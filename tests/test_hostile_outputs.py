"""Outputs under adverse conditions: killed runs, full disks, left-over staging folders, file modes.

A run is killed for real (SIGKILL in a forked copy of this process, at a chosen point of the write);
the next run must find the previous target intact (or restore it) and leave nothing behind. Only
folders that are clearly ours (our name pattern for that target, a process that no longer runs, older
than the running process) are ever removed.
"""

import errno
import os
import signal
import stat
import time
import zipfile

import pytest
import transformers
import transformers.modeling_utils
from helpers import TINY_CKPT, load_script
from hostile import digest, file_size_limited, hidden_entries, refusal, run_child
from safetensors import SafetensorError

import convert_checkpoint
from armhubert.cli import UserError
from armhubert.convert import folders
from armhubert.files import atomic as outputs
from armhubert.files.lock import output_lock


def _convert(target, *extra):
    return convert_checkpoint.main([str(TINY_CKPT), "--output-dir", str(target), *map(str, extra)])


def _killed(target, patch):
    """Run `_convert(target, --overwrite)` in a forked child that `patch` arranges to SIGKILL mid-write."""
    child = os.fork()
    if child == 0:  # the child: never returns into pytest
        try:
            patch(lambda: os.kill(os.getpid(), signal.SIGKILL))
            _convert(target, "--overwrite")
        finally:
            os._exit(3)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def _next_process(monkeypatch):
    """What the next run sees: it started after the killed one."""
    monkeypatch.setattr(outputs, "_PROCESS_START", time.time() + 1)


def _dead_pid():
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    return child


@pytest.fixture
def previous(tmp_path, capsys):
    """A converted folder (the previous output) and its digest."""
    target = tmp_path / "model"
    assert _convert(target) == 0
    capsys.readouterr()
    (target / "README.md").write_text("the previous card")  # tell the old output from a new one
    return target, digest(target)


def test_killed_while_writing_leaves_the_target_and_the_next_run_cleans_up(previous, monkeypatch, capsys):
    target, before = previous

    def kill_while_writing(kill):
        monkeypatch.setattr(folders, "release_feature_extractor", lambda: kill())

    _killed(target, kill_while_writing)
    assert digest(target) == before
    assert [name for name in hidden_entries(target.parent) if ".armhubert-staging-" in name]  # the killed run's
    _next_process(monkeypatch)
    assert "not empty; pass --overwrite" in refusal(capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", target)
    assert hidden_entries(target.parent) == [] and digest(target) == before


def test_killed_between_the_two_renames_restores_the_previous_target(previous, monkeypatch, capsys):
    target, before = previous
    real_replace = os.replace

    def kill_once_the_old_folder_is_aside(kill):
        monkeypatch.setattr(outputs, "_exchange", lambda first, second: False)  # a filesystem without RENAME_EXCHANGE

        def replace(source, destination):
            real_replace(source, destination)
            if str(source) == str(target):
                kill()

        monkeypatch.setattr(os, "replace", replace)

    _killed(target, kill_once_the_old_folder_is_aside)
    assert not target.exists()  # the window: the old folder is aside, the new one not yet in
    _next_process(monkeypatch)
    # The next run puts it back before it looks at the target (so without --overwrite it finds it there).
    assert "not empty; pass --overwrite" in refusal(capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", target)
    assert digest(target) == before and hidden_entries(target.parent) == []


def test_killed_after_the_swap_keeps_the_new_target_and_the_next_run_removes_the_old(previous, monkeypatch):
    target, before = previous
    real_exchange = outputs._exchange

    def kill_after_the_swap(kill):
        def exchange(first, second):
            assert real_exchange(first, second)
            kill()

        monkeypatch.setattr(outputs, "_exchange", exchange)

    _killed(target, kill_after_the_swap)
    assert (target / "README.md").read_text() != "the previous card"  # the new folder is complete and in place
    assert len(hidden_entries(target.parent)) == 1  # the old folder, under the staging name
    _next_process(monkeypatch)
    assert _convert(target, "--overwrite") == 0
    assert hidden_entries(target.parent) == []


def test_only_our_leftovers_of_dead_runs_for_this_target_are_removed(tmp_path, monkeypatch):
    target = tmp_path / "model"
    dead, alive = _dead_pid(), os.getppid()
    ours = [f".model.armhubert-staging-{dead}-abc123", f".model.armhubert-old-{dead}-xyz_9"]
    kept = [
        f".model.armhubert-staging-{alive}-abc123",  # a run still in progress
        f".other.armhubert-staging-{dead}-abc123",  # another target's
        ".model.armhubert-staging-backup",  # not our pattern
        ".model.backup",
        "model.armhubert-staging-1-a",  # not hidden: not ours
    ]
    for name in ours + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text(name)
    _next_process(monkeypatch)
    assert _convert(target) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["model"])
    assert all((tmp_path / name / "file").read_text() == name for name in kept)

    fresh = tmp_path / f".model.armhubert-staging-{dead}-new"
    fresh.mkdir()
    monkeypatch.setattr(outputs, "_PROCESS_START", time.time() - 60)  # made after this process started: kept
    outputs.recover_interrupted_writes(target)
    assert fresh.is_dir()


# How safetensors (Rust) reports a full disk: not an OSError.
_SAFETENSORS_DISK_FULL = (
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
)


@pytest.mark.parametrize("raised", ["OSError", "SafetensorError"])
def test_a_full_disk_gives_one_line_and_keeps_the_previous_target(previous, monkeypatch, capsys, raised):
    target, before = previous

    def disk_full(*args, **kwargs):
        if raised == "SafetensorError":
            raise SafetensorError(_SAFETENSORS_DISK_FULL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[1]) if len(args) > 1 else None)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    line = refusal(capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", target, "--overwrite")
    assert "No space left on device" in line
    assert digest(target) == before and hidden_entries(target.parent) == []
    line = refusal(capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", target.parent / "new")
    assert "No space left on device" in line and not (target.parent / "new").exists()


def test_written_folders_get_the_usual_modes_not_mkdtemp_s(tmp_path, capsys):
    previous_mask = os.umask(0o022)
    try:
        source = tmp_path / "src"
        source.mkdir()
        (source / "run.ckpt").write_bytes(TINY_CKPT.read_bytes())
        assert convert_checkpoint.main(["--all", str(source), "--output-dir", str(tmp_path / "repo")]) == 0
        assert _convert(tmp_path / "model") == 0
    finally:
        os.umask(previous_mask)
    for root in (tmp_path / "repo", tmp_path / "model"):
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_the_swap_exchanges_two_folders_in_one_step(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "name").write_text(folder.name)
    assert outputs._exchange(first, second)  # Linux (the test machines): renameat2 RENAME_EXCHANGE
    assert (first / "name").read_text() == "b" and (second / "name").read_text() == "a"


def test_onnx_export_never_writes_over_a_model_file(tmp_path, capsys):
    export_onnx = load_script("export_onnx")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    line = refusal(capsys, export_onnx.main, model, "--output", model / "model.safetensors", "--overwrite")
    assert "must name a .onnx file" in line and (model / "model.safetensors").read_bytes() == b"weights"


# --------------------------------------------------------------------------------------------------
# --overwrite replaces what this project writes, where it writes it; nothing else


def _make_file(path, text="mine"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    "intruder, shown",
    [
        ("runs/x/n.txt", "runs/x/n.txt"),
        ("checkpoint-3/my-notes.txt", "checkpoint-3/my-notes.txt"),
        (".model.armhubert-old-1-keep/previous/config.json", ".model.armhubert-old-1-keep/"),
        ("checkpoint-3/sub/optimizer.pt", "checkpoint-3/sub/"),
    ],
)
def test_overwrite_keeps_files_it_did_not_write_inside_our_folders(previous, capsys, intruder, shown):
    target, _ = previous
    _make_file(target / "checkpoint-3" / "trainer_state.json", "{}")  # a checkpoint of ours beside the intruder
    _make_file(target / intruder)
    before = digest(target)
    line = refusal(capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", target, "--overwrite")
    assert f"it holds {shown}" in line and "which this tool did not write" in line, line
    assert digest(target) == before and hidden_entries(target.parent) == []


def test_overwrite_refuses_a_plain_transformers_model_folder(tmp_path, capsys):
    foreign = tmp_path / "hubert"
    transformers.HubertModel(transformers.HubertConfig(**_TINY_HUBERT)).save_pretrained(foreign)
    (foreign / "README.md").write_text("# my HuBERT\nnotes about my fine-tuning\n")
    before = digest(foreign)
    line = refusal(capsys, convert_checkpoint.main, TINY_CKPT, "--output-dir", foreign, "--overwrite")
    assert "is a model folder that this tool did not write" in line, line
    assert digest(foreign) == before


_TINY_HUBERT = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=37,
    conv_dim=[8, 8],
    conv_kernel=[10, 3],
    conv_stride=[5, 2],
    num_conv_pos_embeddings=8,
    num_conv_pos_embedding_groups=2,
)


def test_fine_tuning_rotation_removes_only_checkpoints_this_run_saved(tmp_path):
    from transformers import TrainerState, TrainingArguments

    from armhubert.training.checkpoints import CheckpointRotation

    args = TrainingArguments(output_dir=str(tmp_path), save_total_limit=1, report_to="none")
    rotation = CheckpointRotation(args, keep_last=args.save_total_limit)
    assert args.save_total_limit is None  # the Trainer's own rotation (any checkpoint-N of the folder) is off
    _make_file(tmp_path / "checkpoint-0" / "my-notes.txt")
    state = TrainerState()
    for step in (1, 2, 3):
        state.global_step = step
        _make_file(tmp_path / f"checkpoint-{step}" / "trainer_state.json", "{}")
        rotation.on_save(args, state, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0", "checkpoint-3"]
    state.best_model_checkpoint, state.global_step = str(tmp_path / "checkpoint-3"), 4
    _make_file(tmp_path / "checkpoint-4" / "trainer_state.json", "{}")
    rotation.on_save(args, state, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0", "checkpoint-3", "checkpoint-4"]


# --------------------------------------------------------------------------------------------------
# Symbolic links, write failures, corrupt members, concurrent writers


def test_a_symlinked_output_dir_stays_a_link_and_nothing_is_left_beside_it(previous, tmp_path, capsys):
    target, before = previous
    link = tmp_path / "latest"
    link.symlink_to(target)
    assert _convert(link, "--overwrite") == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert (target / "README.md").read_text() != "the previous card"  # the folder it points to was replaced
    assert hidden_entries(tmp_path) == []


_FSIZE_CHILD = file_size_limited("import convert_checkpoint", "convert_checkpoint.main")


def test_a_file_size_limit_gives_one_line_and_leaves_nothing(tmp_path):
    child = run_child(_FSIZE_CHILD, [TINY_CKPT, "--output-dir", tmp_path / "model"])
    lines = child.stdout.strip().splitlines()
    assert child.returncode == 2 and len(lines) == 1, (child.stdout, child.stderr[-2000:])
    assert "could not write" in lines[0] and "File too large" in lines[0] and "free disk space" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_a_flipped_byte_in_a_zip_member_is_refused(tmp_path, capsys):
    data = bytearray(TINY_CKPT.read_bytes())
    with zipfile.ZipFile(TINY_CKPT) as archive:
        weight = next(info for info in archive.infolist() if "/data/" in info.filename and info.file_size > 64)
    header = weight.header_offset  # the local header's name and extra lengths (torch pads the extra field)
    start = header + 30 + int.from_bytes(data[header + 26 : header + 28], "little")
    start += int.from_bytes(data[header + 28 : header + 30], "little")
    data[start + 5] ^= 0x20  # one bit of one weight
    broken = tmp_path / "flipped.ckpt"
    broken.write_bytes(bytes(data))
    line = refusal(capsys, convert_checkpoint.main, broken, "--output-dir", tmp_path / "out")
    assert "is corrupt (Bad CRC-32 for file" in line and "copy or download it again" in line, line
    assert not (tmp_path / "out").exists()


def test_one_writer_per_output_dir(tmp_path):
    out = tmp_path / "run"
    with output_lock(out):
        with pytest.raises(UserError, match=rf"output_dir {out} is being written by process {os.getpid()} "):
            with output_lock(out):
                pass
        assert hidden_entries(tmp_path) == [".run.armhubert-lock"]
    assert hidden_entries(tmp_path) == []
    with output_lock(out):  # free again once the first writer is done
        pass
