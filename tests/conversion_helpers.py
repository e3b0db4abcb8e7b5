"""Helpers shared by the converter tests (test_convert_*.py): fixture files, running `vmamba-convert` as a user
does, and a loopback HTTP server standing in for GitHub releases."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import fixtures_dir

import transformers_vmamba.convert as cli


REPO = Path(__file__).resolve().parents[1]
FIXTURES = fixtures_dir().resolve()
BACKBONE_CHECKPOINT = FIXTURES / "backbone_v2_ln_mmseg" / "checkpoint.pth"
CLASSIFICATION_FIXTURES = ["v0_vanilla", "v0_vanilla_ema", "v2_s2l_ln2d", "v2v_s1l_ln2d", "v2_s2l_ln"]


def fixture_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def cli_env() -> dict:
    """The subprocess must import this checkout's package, not whatever is installed."""
    env = dict(os.environ)
    paths = [str(REPO / "src"), str(REPO / "kernels")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("HF_HUB_OFFLINE", None)  # nothing leaves the machine anyway; the download test needs the loopback
    env["VMAMBA_CACHE"] = str(Path(env.get("TMPDIR", "/tmp")) / "vmamba-test-cache-unused")
    return env


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "transformers_vmamba.convert", *map(str, args)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_in_process(*args) -> subprocess.CompletedProcess:
    """The same entry point without a new interpreter (saves ~5 s of imports per run)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(arg) for arg in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_clean_failure(parent: Path, output: Path) -> None:
    assert not output.exists(), f"{output} was left behind"
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(f".{output.name}.")]
    assert leftovers == [], f"temporary folders left behind: {leftovers}"


def write_checkpoint(path: Path, **entries) -> Path:
    torch.save(entries, path)
    return path


def plain_fixture_state_dict(name: str = "v0_vanilla", key: str = "model") -> dict:
    return dict(torch.load(FIXTURES / name / "checkpoint.pth", map_location="cpu", weights_only=True)[key])


def load_inputs() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(FIXTURES / "inputs.safetensors")


def manifest_state_dict(builder: str, fill=None) -> dict[str, torch.Tensor]:
    """Exactly the released keys and shapes. Without `fill` the tensors are left uninitialised (cheap: only the
    layout is checked)."""
    manifest = json.loads((FIXTURES / "manifests" / f"{builder}.json").read_text())
    if fill is None:
        return {key: torch.empty(shape) for key, shape in manifest["state_dict"].items()}
    return {key: fill(shape) for key, shape in manifest["state_dict"].items()}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module", name="http_server")
def http_server_fixture(tmp_path_factory):
    """(served folder, base URL, list of requested paths) of a loopback HTTP server."""
    root = tmp_path_factory.mktemp("served")
    requests = []

    class Handler(_QuietHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()
