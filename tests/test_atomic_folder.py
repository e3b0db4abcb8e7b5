"""`write_folder_atomically`, the one way this project writes a folder (converter, examples' dataset): killed at any
point, run concurrently, or pointed at the wrong folder, the output is the complete old or the complete new folder
and nothing else is left."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transformers_vmamba.atomic_folder import FolderWriteError, check_output_folder, write_folder_atomically


REPO = Path(__file__).resolve().parents[1]

# argv: output, content tag, os.replace/rmtree call to die at (0: none, -1: while writing), lock folder, writes.
# The module is loaded from its file alone (it needs no other part of the package): children start in a blink.
CHILD = """
import importlib.util, os, shutil, sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("atomic_folder", sys.argv[6])
atomic_folder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic_folder)

output, tag, die_at, locks, writes = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
calls = 0

def dying(real):
    def call(*args, **kwargs):
        global calls
        calls += 1
        if calls == die_at:
            os._exit(9)  # as kill -9: no cleanup of any kind
        return real(*args, **kwargs)
    return call

atomic_folder.os.replace = dying(os.replace)
atomic_folder.shutil.rmtree = dying(shutil.rmtree)
errors = 0
for index in range(writes):
    try:
        with atomic_folder.write_folder_atomically(output, overwrite=True, owned_by_us=lambda folder: None,
                                                   lock_dir=locks) as tmp:
            for name in ("a.txt", "b.txt", "c.txt"):
                (tmp / name).write_text(f"{tag}-{index}")
            if die_at == -1:
                os._exit(9)
    except Exception as error:
        errors += 1
        print(type(error).__name__, error, file=sys.stderr)
print(errors)
"""


@pytest.fixture(scope="module")
def child(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("child") / "child.py"
    path.write_text(CHILD)
    return path


def run_child(child: Path, output: Path, tag: str, die_at: int, locks: Path, writes: int = 1):
    module = REPO / "src" / "transformers_vmamba" / "atomic_folder.py"
    args = [str(child), str(output), tag, str(die_at), str(locks), str(writes), str(module)]
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def contents(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(folder.iterdir())}


def write(output: Path, locks: Path, text: str = "x", **kwargs) -> None:
    with write_folder_atomically(output, lock_dir=locks, **kwargs) as tmp:
        (tmp / "a.txt").write_text(text)


# the calls of an install over an existing folder: 1 = move the old folder aside, 2 = move the new one in,
# 3 = delete the old one
@pytest.mark.parametrize("die_at", [1, 2, 3])
def test_killed_during_replacement_the_next_run_finds_a_complete_folder(child, tmp_path, die_at):
    output, locks = tmp_path / "out" / "model", tmp_path / "locks"
    output.parent.mkdir()
    assert run_child(child, output, "old", 0, locks).wait() == 0
    assert run_child(child, output, "new", die_at, locks).wait() == 9
    # the next writer (here one that fails) first repairs what the killed one left
    with pytest.raises(RuntimeError), write_folder_atomically(output, overwrite=True, owned_by_us=lambda f: None,
                                                              lock_dir=locks):
        raise RuntimeError("writer fails")
    expected = "old-0" if die_at < 3 else "new-0"
    assert contents(output) == {name: expected for name in ("a.txt", "b.txt", "c.txt")}
    assert sorted(p.name for p in output.parent.iterdir()) == ["model"]


def test_killed_while_writing_a_new_folder_creates_no_parents(child, tmp_path):
    """The temporary folder lives in the deepest folder that exists; missing parents appear only at the rename."""
    output, locks = tmp_path / "a" / "b" / "model", tmp_path / "locks"
    assert run_child(child, output, "new", -1, locks).wait() == 9  # died with the files written
    assert [p.name for p in tmp_path.iterdir() if p.name != "locks"][0].startswith(".model.tmp-")
    assert not (tmp_path / "a").exists()
    write(output, locks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "locks"] and contents(output) == {"a.txt": "x"}


def test_concurrent_writers_take_turns(child, tmp_path):
    output, locks = tmp_path / "out" / "model", tmp_path / "locks"
    writers = [run_child(child, output, f"writer{k}", 0, locks, writes=15) for k in range(4)]
    results = [writer.communicate(timeout=600) for writer in writers]
    outcomes = [(writer.returncode, out.strip(), err) for writer, (out, err) in zip(writers, results)]
    assert outcomes == [(0, "0", "")] * 4  # exit status, number of failed writes, stderr
    assert sorted(p.name for p in output.parent.iterdir()) == ["model"]
    assert len(set(contents(output).values())) == 1  # one writer's complete folder, not a mix


def test_leftovers_of_another_output_are_not_touched(tmp_path):
    """Temporary folders carry a key of their output's full path: a folder of the same name elsewhere, or a user's
    folder that merely looks similar, is never removed."""
    locks = tmp_path / "locks"
    look_alike = tmp_path / ".model.tmp-mine"
    look_alike.mkdir()
    other = tmp_path / "x" / "model"  # same name, other parent, temp folder in the shared ancestor
    with write_folder_atomically(other, lock_dir=locks) as tmp:
        (tmp / "a.txt").write_text("other")
        write(tmp_path / "model", locks)  # cleans its own leftovers while `other` is being written
        assert tmp.is_dir()
    assert contents(other) == {"a.txt": "other"} and look_alike.is_dir()


def test_failure_inside_the_block_keeps_the_old_folder(tmp_path):
    output, locks = tmp_path / "model", tmp_path / "locks"
    write(output, locks, "old")
    with pytest.raises(KeyboardInterrupt):
        with write_folder_atomically(output, overwrite=True, owned_by_us=lambda f: None, lock_dir=locks) as tmp:
            (tmp / "a.txt").write_text("new")
            raise KeyboardInterrupt
    assert contents(output) == {"a.txt": "old"} and sorted(p.name for p in tmp_path.iterdir()) == ["locks", "model"]


def test_refusals_name_the_folder_and_touch_nothing(tmp_path, monkeypatch):
    locks = tmp_path / "locks"
    output = tmp_path / "model"
    write(output, locks, "old")
    with pytest.raises(FolderWriteError, match=r"already exists \(pass --overwrite to replace it\)"):
        write(output, locks)
    with pytest.raises(FolderWriteError, match="refusing to replace .*: nothing says this program wrote it"):
        write(output, locks, overwrite=True)
    with pytest.raises(FolderWriteError, match="refusing to replace .*: not ours; nothing in it was touched"):
        write(output, locks, overwrite=True, owned_by_us=lambda folder: "not ours")
    monkeypatch.chdir(output)
    with pytest.raises(FolderWriteError, match="it is the current directory"):
        write(".", locks, overwrite=True, owned_by_us=lambda folder: None)
    with pytest.raises(FolderWriteError, match="it contains the current directory"):
        write(tmp_path, locks, overwrite=True, owned_by_us=lambda folder: None)
    with pytest.raises(FolderWriteError, match="it is a filesystem root"):  # the check alone: nothing is written
        check_output_folder("/", overwrite=True, owned_by_us=lambda folder: None)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FolderWriteError, match="it is the home directory"):
        write("~", locks, overwrite=True, owned_by_us=lambda folder: None)
    with pytest.raises(FolderWriteError, match="the output path is empty"):
        write("", locks)
    assert contents(output) == {"a.txt": "old"}


def test_written_folder_gets_the_usual_modes(tmp_path):
    umask = os.umask(0o022)
    try:
        write(tmp_path / "model", tmp_path / "locks")
    finally:
        os.umask(umask)
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755  # mkdtemp alone gives 0o700
    assert (tmp_path / "model" / "a.txt").stat().st_mode & 0o777 == 0o644


SIGTERM_CHILD = """
import importlib.util, sys, time
from pathlib import Path

spec = importlib.util.spec_from_file_location("atomic_folder", sys.argv[4])
atomic_folder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic_folder)
with atomic_folder.sigterm_as_exit(), atomic_folder.write_folder_atomically(sys.argv[1], lock_dir=sys.argv[2]) as tmp:
    (tmp / "a.txt").write_text("x")
    Path(sys.argv[3]).touch()
    time.sleep(60)
"""


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    script, ready, output = tmp_path / "child.py", tmp_path / "ready", tmp_path / "work" / "new" / "model"
    script.write_text(SIGTERM_CHILD)
    (tmp_path / "work").mkdir()
    module = REPO / "src" / "transformers_vmamba" / "atomic_folder.py"
    process = subprocess.Popen([sys.executable, str(script), str(output), str(tmp_path / "locks"), str(ready),
                                str(module)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), process.communicate(timeout=10)
        process.terminate()
        process.wait(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 143
    assert list((tmp_path / "work").iterdir()) == []
