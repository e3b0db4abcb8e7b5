"""The README's ```python snippets run as written (the fixture checkpoint and a real photo stand in for the files they
name). ```py blocks are sketches that need a GPU and are not run."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import fixtures_dir
from PIL import Image


README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    from sklearn.datasets import load_sample_image

    blocks = python_blocks()
    assert len(blocks) >= 4, "README lost its usage snippets"
    monkeypatch.chdir(tmp_path)
    Image.fromarray(load_sample_image("china.jpg")).save("cat.jpg")
    stand_ins = {
        "vssm1_tiny_0230s_ckpt_epoch_264.pth": str(fixtures_dir() / "v2_s2l_ln2d" / "checkpoint.pth"),
        "upernet_vssm_4xb4-160k_ade20k-512x512_tiny_iter_160000.pth": str(
            fixtures_dir() / "seg_upernet_v2_ln2d_mmseg" / "checkpoint.pth"
        ),
    }
    namespace: dict = {}
    for block in blocks:
        for name, path in stand_ins.items():
            block = block.replace(name, path)
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert Path("vmamba-tiny-s1l8", "model.safetensors").is_file()
    assert Path("upernet-vmamba", "preprocessor_config.json").is_file()
