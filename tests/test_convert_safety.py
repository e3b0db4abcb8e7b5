"""`vmamba-convert` under bad input and faults (issue 12): one clear error line naming the problem, exit status 1,
nothing half-written, and no file of the user's touched (``--overwrite`` included). The generic folder-writing
machinery (kills, concurrent writers) is tested on its own in test_atomic_folder.py."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conversion_helpers import (
    BACKBONE_CHECKPOINT,
    FIXTURES,
    assert_clean_failure,
    cli_env,
    error_lines,
    http_server_fixture,  # noqa: F401 - the http_server fixture
    plain_fixture_state_dict,
    run_cli,
    run_in_process,
    write_checkpoint,
)

import transformers_vmamba.convert as cli
from transformers_vmamba.released_models import get_released_model


V0 = FIXTURES / "v0_vanilla" / "checkpoint.pth"  # Vanilla (v0): hidden sizes 32..256, depths 1, 1, 2, 1
V2 = FIXTURES / "v2_s2l_ln" / "checkpoint.pth"  # v2: hidden sizes 16..128, depths 1, 1, 2, 1


def _changed(tmp: Path, name: str, change, fixture: Path = V2, key: str = "model") -> Path:
    """A copy of a fixture's `key` weights with `change(state_dict)` applied, saved as the original code does."""
    state_dict = dict(torch.load(fixture, map_location="cpu", weights_only=True)[key])
    change(state_dict)
    return write_checkpoint(tmp / f"{name}.pth", model=state_dict)


def _set(key, value):
    return lambda state_dict: state_dict.__setitem__(key, value(state_dict[key]))


def _drop(prefix):
    def change(state_dict):
        for key in [key for key in state_dict if key.startswith(prefix)]:
            del state_dict[key]

    return change


def _add(key, value):
    return lambda state_dict: state_dict.__setitem__(key, value)


def _poison(key, index, value):
    def change(state_dict):
        state_dict[key] = state_dict[key].clone()
        state_dict[key][index] = value

    return change


def _backbone_with(change) -> dict:
    checkpoint = torch.load(BACKBONE_CHECKPOINT, map_location="cpu", weights_only=True)
    change(checkpoint["state_dict"])
    return checkpoint


# name -> function(tmp folder) -> (arguments before --output, regular expression the one error line must match)
BAD_INPUTS = {
    # unreadable files
    "truncated file": lambda tmp: (
        ["--checkpoint", _write_bytes(tmp / "cut.pth", V0.read_bytes()[: V0.stat().st_size // 2])],
        r"cannot read .*cut\.pth.* \(damaged or truncated file\?\)",
    ),
    "not a checkpoint": lambda tmp: (
        ["--checkpoint", _write_bytes(tmp / "garbage.pth", b"this is not a checkpoint\n" * 100)],
        r"cannot read .*garbage\.pth.*damaged or truncated",
    ),
    "empty file": lambda tmp: (["--checkpoint", _write_bytes(tmp / "empty.pth", b"")], r"cannot read .*empty\.pth"),
    "missing file": lambda tmp: (["--checkpoint", tmp / "nowhere.pth"], r"checkpoint file not found: .*nowhere\.pth"),
    "unknown model name": lambda tmp: (
        ["--model", "vmamba-huge"],
        r"unknown model name 'vmamba-huge'; known names: vanilla-vmamba-tiny, .*vmamba-base-s1l20",
    ),
    # which weights
    "absent weights key": lambda tmp: (
        ["--checkpoint", V0, "--weights-key", "model_ema"],
        r"the checkpoint has no 'model_ema' weights; available weight keys: \['model'\]",
    ),
    "empty model entry": lambda tmp: (
        ["--checkpoint", write_checkpoint(tmp / "empty_model.pth", model={}, epoch=3)],
        r"checkpoint\['model'\] is empty: it holds no weights",
    ),
    "nested model entry": lambda tmp: (
        ["--checkpoint", write_checkpoint(tmp / "nested.pth", model={"model": plain_fixture_state_dict()})],
        r"checkpoint\['model'\] holds nested entries \['model'\] instead of tensors",
    ),
    "no weights at all": lambda tmp: (
        ["--checkpoint", write_checkpoint(tmp / "noweights.pth", epoch=3, config={"lr": 0.1})],
        r"no weights found: expected one of 'model_ema', 'model', 'state_dict'; top-level keys: \['epoch', 'config'\]",
    ),
    # named release
    "wrong family": lambda tmp: (
        ["--checkpoint", V0, "--model", "vmamba-tiny-s2l5"],
        r"does not match variant 'vmamba-tiny-s2l5' \(VMamba-T\[s2l5\], a v2 model\): it is a v0 model",
    ),
    "wrong size": lambda tmp: (
        ["--checkpoint", FIXTURES / "v2_s2l_ln2d" / "checkpoint.pth", "--model", "vmamba-tiny-s2l5"],
        r"it is a v2 model with hidden sizes \[32, 64, 128, 256\] and depths \[1, 1, 2, 1\]\. Differences: "
        r"hidden_sizes: checkpoint has \[32, 64, 128, 256\] but vmamba-tiny-s2l5 has \[96, 192, 384, 768\]",
    ),
    "release file of another model": lambda tmp: (
        ["--checkpoint", _copy(V2, tmp / get_released_model("vmamba-tiny-s1l8").file_name), "--model",
         "vmamba-tiny-s2l5"],
        r"vssm1_tiny_0230s_ckpt_epoch_264\.pth is the released file of vmamba-tiny-s1l8, not of vmamba-tiny-s2l5",
    ),
    # a file named like a release is checked against it even without --model (here: a block short, and small)
    "release file name, damaged": lambda tmp: (
        ["--checkpoint", _rename(_changed(tmp, "short", _drop("layers.2.blocks.1.")),
                                 get_released_model("vmamba-tiny-s2l5").file_name)],
        r"does not match variant 'vmamba-tiny-s2l5'.*depths: checkpoint has \[1, 1, 1, 1\]",
    ),
    # damaged weights: the message names the key(s) and the shapes
    "missing key": lambda tmp: (
        ["--checkpoint", _changed(tmp, "missing", _drop("layers.2.blocks.1.op.Ds"), V0)],
        r"missing keys \['vmamba\.encoder\.stages\.2\.layers\.1\.ssm\.D'\] \(in the checkpoint's names, with the "
        r"shape expected: \['layers\.2\.blocks\.1\.op\.Ds \(1024,\)'\]\)",
    ),
    "extra key": lambda tmp: (
        ["--checkpoint", _changed(tmp, "extra", _add("layers.0.blocks.0.op.surprise", torch.zeros(3)))],
        r"unexpected keys \['layers\.0\.blocks\.0\.op\.surprise'\]",
    ),
    "removed fc1": lambda tmp: (
        ["--checkpoint", _changed(tmp, "nofc1", _drop("layers.0.blocks.0.mlp.fc1.weight"))],
        r"missing keys \['vmamba\.encoder\.stages\.0\.layers\.0\.mlp\.fc1\.weight'\] "
        r".*layers\.0\.blocks\.0\.mlp\.fc1\.weight \(64, 16\)",
    ),
    "transposed fc1": lambda tmp: (
        ["--checkpoint", _changed(tmp, "fc1t", _set("layers.0.blocks.0.mlp.fc1.weight", lambda w: w.t().clone()))],
        r"wrong shapes: layers\.0\.blocks\.0\.mlp\.fc1\.weight: expected \(64, 16\), found \(16, 64\)",
    ),
    "mis-shaped norm": lambda tmp: (
        ["--checkpoint", _changed(tmp, "norm", _set("layers.1.blocks.0.norm.weight", lambda w: torch.ones(99)))],
        r"wrong shapes: layers\.1\.blocks\.0\.norm\.weight: expected \(32,\), found \(99,\)",
    ),
    "missing last stage": lambda tmp: (
        ["--checkpoint", _changed(tmp, "nostage", _drop("layers.3."))],
        r"missing keys layers\.\{3\}\.blocks\.\* \(no block at all in that stage; layers\.2\.downsample\.\* leads",
    ),
    "missing first block of a stage": lambda tmp: (
        ["--checkpoint", _changed(tmp, "noblock", _drop("layers.0.blocks.0."), FIXTURES / "v0_vanilla_ema" /
                                  "checkpoint.pth")],
        r"missing keys layers\.0\.blocks\.\{0\}\.\* \(13 tensors per block; stage 0 has blocks 1\)",
    ),
    "huge block index": lambda tmp: (
        ["--checkpoint", _changed(tmp, "far", _add("layers.0.blocks.99999.norm.weight", torch.ones(16)))],
        r"missing keys layers\.0\.blocks\.\{99998 indices below 100000\}\.\*",
    ),
    # values the file does not really store, or cannot be weights
    "stride-0 head": lambda tmp: (
        ["--checkpoint", _changed(tmp, "bomb", lambda sd: sd.update({
            "classifier.head.weight": torch.zeros(1, 128).expand(100_000_000, 128),
            "classifier.head.bias": torch.zeros(1).expand(100_000_000),
        }))],
        r"classifier\.head\.(weight|bias) has shape \(100000000(, 128)?\) .* but the file stores only 1(28)? values",
    ),
    "integer weights": lambda tmp: (
        ["--checkpoint", _changed(tmp, "ints", _set("layers.0.blocks.0.op.Ds", lambda w: w.long()))],
        r"layers\.0\.blocks\.0\.op\.Ds has dtype torch\.int64; weights must be floating point",
    ),
    # non-finite weights
    "NaN weight": lambda tmp: (
        ["--checkpoint", _changed(tmp, "nan", _poison("layers.0.blocks.0.op.A_logs", 0, float("nan")))],
        r"non-finite weights: layers\.0\.blocks\.0\.op\.A_logs has 1 of 128 values NaN or infinite; refusing",
    ),
    "inf in A_logs and dt bias": lambda tmp: (
        ["--checkpoint", _changed(tmp, "inf", lambda sd: [
            _poison("layers.0.blocks.0.op.dt_projs_bias", (0, slice(0, 3)), float("inf"))(sd),
            _poison("layers.1.blocks.0.op.A_logs", 0, -float("inf"))(sd),
        ])],
        r"layers\.0\.blocks\.0\.op\.dt_projs_bias has 3 of 128 values NaN or infinite \(and 1 more tensors",
    ),
    # detection/segmentation backbones
    "backbone missing key": lambda tmp: (
        ["--checkpoint",
         write_checkpoint(tmp / "bb_missing.pth", **_backbone_with(_drop("backbone.layers.2.blocks.1.op.Ds")))],
        r"missing keys \['encoder\.stages\.2\.layers\.1\.ssm\.D'\] \(in the checkpoint's names, with the shape "
        r"expected: \['backbone\.layers\.2\.blocks\.1\.op\.Ds \(512,\)'\]\)",
    ),
    "backbone extra key": lambda tmp: (
        ["--checkpoint", write_checkpoint(tmp / "bb_extra.pth", **_backbone_with(
            lambda sd: sd.update({"backbone.layers.0.blocks.0.op.x_proj_bias": torch.zeros(4, 3)})))],
        r"unexpected keys \['backbone\.layers\.0\.blocks\.0\.op\.x_proj_bias'\]",
    ),
    "backbone wrong size": lambda tmp: (
        ["--checkpoint", BACKBONE_CHECKPOINT, "--model", "vmamba-tiny-s2l5"],
        r"does not match variant 'vmamba-tiny-s2l5' \(VMamba-T\[s2l5\], a v2 model\): it is a v2 model with "
        r"hidden sizes \[16, 32, 64, 128\] and depths \[1, 1, 2, 1\]",
    ),
}


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _copy(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    return target


def _rename(path: Path, name: str) -> Path:
    return path.rename(path.with_name(name))


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_clear_line_and_leaves_nothing(case, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args, pattern = BAD_INPUTS[case](inputs)
    output = tmp_path / "out" / "model"
    code = cli.main([*map(str, args), "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"], "output (or its parent) left behind"


def test_bad_input_from_a_real_process(tmp_path):
    data = (FIXTURES / "v2_s2l_ln2d" / "checkpoint.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) * 3 // 4])
    output = tmp_path / "model"
    result = run_cli("--checkpoint", tmp_path / "cut.pth", "--output", output)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert_clean_failure(tmp_path, output)


def test_usage_errors_exit_2(capsys):
    for argv in (["--output", "x"], ["--model", "vmamba-tiny-s1l8"],
                 ["--model", "vmamba-tiny-s1l8", "--output", "x", "--push-to-hub"],
                 ["--model", "vmamba-tiny-s1l8", "--output", ""]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--push-to-hub needs --repo-id" in err and "--output must not be empty" in err


# --------------------------------------------------------------------------------------------------------------
# The output folder: replaced only if this converter wrote it; never the current directory, home or a root.


@pytest.fixture(scope="module")
def converted_folder(tmp_path_factory) -> Path:
    """A folder written by the converter, to copy as the target of --overwrite."""
    output = tmp_path_factory.mktemp("converted") / "model"
    result = run_in_process("--checkpoint", V0, "--output", output)
    assert result.returncode == 0, result.stderr
    return output


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_existing_output_needs_overwrite_and_overwrite_replaces_a_converted_folder(converted_folder, tmp_path, capsys):
    output = tmp_path / "model"
    shutil.copytree(converted_folder, output)
    (output / "model.safetensors").write_bytes(b"stale")  # still only files the converter writes
    assert cli.main(["--checkpoint", str(V2), "--output", str(output)]) == 1
    assert "already exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert (output / "model.safetensors").read_bytes() == b"stale"
    assert cli.main(["--checkpoint", str(V2), "--output", str(output), "--overwrite"]) == 0
    assert (output / "model.safetensors").read_bytes() != b"stale"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


FOREIGN = {
    "a project with a VMamba config": (lambda folder: [
        (folder / "config.json").write_text('{"model_type": "vmamba"}'), (folder / "train.py").write_text("x")],
        r"it holds files vmamba-convert does not write \(train\.py\)"),
    "a converted folder plus a user's file": (lambda folder: (folder / "notes.txt").write_text("mine"),
                                              r"does not write \(notes\.txt\)"),
    "a converted folder that became a git clone": (lambda folder: (folder / ".git").mkdir(),
                                                   r"does not write \(\.git/\)"),
    "another model's folder": (lambda folder: (folder / "config.json").write_text('{"model_type": "convnext"}'),
                               r"its config\.json is not a VMamba config"),
    "a folder without config.json": (lambda folder: (folder / "config.json").unlink(),
                                     r"it has no readable config\.json"),
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_overwrite_refuses_a_folder_it_did_not_write_and_touches_nothing(case, converted_folder, tmp_path, capsys):
    make, pattern = FOREIGN[case]
    output = tmp_path / "model"
    if "converted" in case or "without" in case or "another" in case:
        shutil.copytree(converted_folder, output)
    else:
        output.mkdir()
    make(output)
    before = _snapshot(output)
    assert cli.main(["--checkpoint", str(V0), "--output", str(output), "--overwrite"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert re.search(rf"refusing to replace {re.escape(str(output))}: .*{pattern}.*; nothing in it was touched", line)
    assert _snapshot(output) == before and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# (a filesystem root is checked in test_atomic_folder.py without writing anything: a regression must not rename /)
@pytest.mark.parametrize("where", ["current directory", "parent of the current directory", "home"])
def test_overwrite_never_replaces_the_current_directory_or_home(where, converted_folder, tmp_path, monkeypatch,
                                                                capsys):
    folder = tmp_path / "model"
    shutil.copytree(converted_folder, folder)  # even a folder the converter wrote
    target, reason = {
        "current directory": (".", "it is the current directory"),
        "parent of the current directory": ("..", "it contains the current directory"),
        "home": ("~", "it is the home directory"),
    }[where]
    if where == "parent of the current directory":
        (folder / "sub").mkdir()
        monkeypatch.chdir(folder / "sub")
    else:
        monkeypatch.chdir(folder)
    if where == "home":
        monkeypatch.setenv("HOME", str(folder))
    before = _snapshot(tmp_path)
    assert cli.main(["--checkpoint", str(V0), "--output", target, "--overwrite"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.endswith(reason), line
    assert _snapshot(tmp_path) == before


def test_output_through_a_symbolic_link_or_under_a_file_is_refused(converted_folder, tmp_path, capsys):
    real = tmp_path / "real"
    shutil.copytree(converted_folder, real)
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "file").write_text("x")
    before = _snapshot(tmp_path)
    for output, message in ((tmp_path / "link", "is a symbolic link; give the folder's real path"),
                            (tmp_path / "file" / "model", f"{tmp_path / 'file'} is a file, not a folder"),
                            (tmp_path / "file", "exists and is not a folder")):
        assert cli.main(["--checkpoint", str(V0), "--output", str(output), "--overwrite"]) == 1
        (line,) = error_lines(capsys.readouterr().err)
        assert message in line, line
    assert _snapshot(tmp_path) == before and os.path.islink(tmp_path / "link")


def test_failure_after_writing_leaves_no_trace_and_keeps_the_old_folder(converted_folder, tmp_path, monkeypatch,
                                                                        capsys):
    def broken_verify(folder, model, **kwargs):
        assert (folder / "model.safetensors").is_file()  # the failure happens with files already written
        raise cli.ConversionError("verification failed: simulated")

    monkeypatch.setattr(cli, "verify_folder", broken_verify)
    fresh = tmp_path / "new" / "deeper" / "model"
    assert cli.main(["--checkpoint", str(V2), "--output", str(fresh)]) == 1
    assert "error: verification failed: simulated" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # temp folder and the parents it made are gone

    existing = tmp_path / "model"
    shutil.copytree(converted_folder, existing)
    before = _snapshot(existing)
    assert cli.main(["--checkpoint", str(V2), "--output", str(existing), "--overwrite"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert _snapshot(existing) == before


# --------------------------------------------------------------------------------------------------------------
# Non-finite weights are refused unless asked for; then they are kept exactly.


def test_allow_non_finite_keeps_nan_weights_with_a_warning(tmp_path, caplog):
    from safetensors.torch import load_file

    checkpoint = _changed(tmp_path, "nan", _poison("layers.0.blocks.0.op.A_logs", 0, float("nan")))
    output = tmp_path / "model"
    with caplog.at_level("WARNING", logger="transformers_vmamba.original_checkpoint"):
        assert cli.main(["--checkpoint", str(checkpoint), "--output", str(output), "--allow-non-finite"]) == 0
    assert "non-finite weights: layers.0.blocks.0.op.A_logs has 1 of 128 values NaN or infinite; kept" in caplog.text
    saved = load_file(output / "model.safetensors")["vmamba.encoder.stages.0.layers.0.ssm.A_log"]
    assert torch.isnan(saved[0]).all() and torch.isfinite(saved[1:]).all()


# --------------------------------------------------------------------------------------------------------------
# Downloads: the cache stays inside itself, and a damaged cached file is fetched again.


def test_cached_file_name_cannot_leave_the_cache(tmp_path):
    for url in ("https://example.org/a/..%2F..%2F..%2Fevil.pth", "https://example.org/%2E%2E", "https://example.org/"):
        path = cli.cached_path(url, tmp_path)
        assert path.parent.parent == tmp_path and path.name not in ("", ".", ".."), (url, path)
    assert cli.cached_path("https://example.org/x/%23v0cls/ckpt.pth", tmp_path).name == "ckpt.pth"


def test_damaged_cached_download_is_fetched_again(http_server, tmp_path, capsys):
    root, base, requests = http_server
    (root / "good.pth").write_bytes(V2.read_bytes())
    url = f"{base}/good.pth"
    cache = tmp_path / "cache"
    cached = cli.download_checkpoint(url, cache)
    cached.write_bytes(cached.read_bytes()[:1000])  # damaged after the download finished (disk, user, ...)
    count = len(requests)
    output = tmp_path / "model"
    assert cli.main(["--checkpoint", url, "--cache-dir", str(cache), "--output", str(output)]) == 0
    err = capsys.readouterr().err
    assert f"the cached download {cached} is unreadable" in err and "downloading it again" in err
    assert len(requests) == count + 1 and cached.read_bytes() == V2.read_bytes()

    (root / "bad.pth").write_bytes(b"not a checkpoint")  # the server's own file is broken: error, nothing kept
    bad = f"{base}/bad.pth"
    assert cli.main(["--checkpoint", bad, "--cache-dir", str(cache), "--output", str(tmp_path / "other")]) == 1
    assert "cannot read" in capsys.readouterr().err and not cli.cached_path(bad, cache).exists()


def test_interrupted_download_leaves_no_partial_file(tmp_path, monkeypatch):
    import huggingface_hub.file_download

    def interrupted(url, handle, **kwargs):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(huggingface_hub.file_download, "http_get", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.download_checkpoint("https://example.org/ckpt.pth", tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# --------------------------------------------------------------------------------------------------------------
# SIGTERM cleans up as Ctrl-C does.

SIGTERM_CHILD = """
import sys, time
from pathlib import Path
import transformers_vmamba.convert as cli

def slow_verify(folder, model, **kwargs):
    Path(sys.argv[2]).write_text(str(folder))  # the temporary folder exists and holds the weights now
    time.sleep(60)

cli.verify_folder = slow_verify
sys.exit(cli.main(["--checkpoint", sys.argv[1], "--output", sys.argv[3]]))
"""


def test_sigterm_during_writing_removes_the_temporary_folder(tmp_path):
    script, ready = tmp_path / "child.py", tmp_path / "ready"
    script.write_text(SIGTERM_CHILD)
    work = tmp_path / "work"
    work.mkdir()
    output = work / "new" / "model"
    child = subprocess.Popen([sys.executable, str(script), str(V0), str(ready), str(output)], env=cli_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), child.communicate(timeout=10)
        assert Path(ready.read_text()).is_dir()
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 128 + signal.SIGTERM, err
    assert sorted(p.name for p in work.iterdir()) == [], "temporary folder or created parents left behind"

