"""Every code block of the README and of every docs page runs as written (see ``tests/_docs_blocks.py``
for what counts as code and how a block that cannot run here is marked).

Each page runs in a fresh process, in its own folder: a copy of ``examples/`` with the checkout's
``.venv`` beside it and ``../shared`` linked, as in a clone beside the shared data. The environment is a
new user's offline one: ``GRVL_MODEL`` names the tiny guard trained on the toy rule (so ``grvl check``
and ``Guard.from_pretrained()`` load it), the hub is off (``HF_HUB_OFFLINE``), and ``.venv/bin`` is first
on ``PATH``. Pages whose python blocks need a fixture environment (a loopback upstream...) are run by
their own test, listed in ``RUN_ELSEWHERE``; their shell blocks run here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs_blocks import ROOT, Block, blocks, pages, to_json

#: page -> the test that runs its python blocks, every one not marked not-run, in order.
RUN_ELSEWHERE = {
    "docs/middleware.md": "tests/test_middleware_docs.py",
    "docs/remote-backend.md": "tests/test_middleware_docs.py",
    "docs/integrations/langchain.md": "tests/test_integrations_docs.py",
    "docs/integrations/openai.md": "tests/test_integrations_docs.py",
}
PAGE_TIMEOUT = 600

ALL = [block for page in pages() for block in blocks(page)]


def _page_blocks(page: str) -> list[Block]:
    chosen = [b for b in ALL if b.page == page and b.kind != "data" and b.not_run is None]
    if page in RUN_ELSEWHERE:
        chosen = [b for b in chosen if b.kind != "python"]
    return chosen


RUN_HERE = sorted({b.page for b in ALL if _page_blocks(b.page)})


def test_pages_found_and_every_fence_is_code_or_data():
    assert {"README.md", "docs/getting-started.md", "docs/api.md"} <= {b.page for b in ALL}
    for block in ALL:
        assert block.lang in {"python", "bash", "sh", "shell", "", "text", "yaml", "toml", "json", "dockerfile"}, (
            f"{block.where}: unknown fence language {block.lang!r}: say what it is (python, bash, text...)"
        )
        if block.kind == "data":
            assert block.not_run is None, f"{block.where}: a {block.lang or 'plain'} block is never run; drop the mark"
            code_like = [ln for ln in block.code.splitlines() if ln.startswith(("$ grvl", "from grvl_sdk", "import "))]
            assert not code_like, f"{block.where}: code in a {block.lang or 'plain'} block is never run: {code_like}"


def test_pages_run_elsewhere_have_their_test():
    for page, test in RUN_ELSEWHERE.items():
        assert page in {b.page for b in ALL}, page
        assert Path(page).name in (ROOT / test).read_text(encoding="utf-8"), f"{test} does not run {page}"


@pytest.mark.parametrize("block", [b for b in ALL if b.not_run], ids=lambda b: b.where)
def test_not_run_blocks_say_why(block):
    """One skip per block marked not-run, with the page's reason: ``pytest -rs`` lists them."""
    assert len(block.not_run) >= 10, f"{block.where}: give a reason a reader understands"
    pytest.skip(f"{block.where} not run: {block.not_run}")


@pytest.fixture(scope="module")
def docs_env(trained_tiny_guard_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRVL_", "OPENAI_", "PYTEST_"))}
    for keep in ("GRVL_CACHE_DIR", "GRVL_SHARED_DATA"):
        if keep in os.environ:
            env[keep] = os.environ[keep]
    env.update(
        GRVL_MODEL=str(trained_tiny_guard_path),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        MPLBACKEND="Agg",
    )
    return env


@pytest.mark.parametrize("page", RUN_HERE)
def test_page_runs_as_written(page, docs_env, tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "examples", clone / "examples")
    (clone / ".venv").symlink_to(Path(sys.executable).parent.parent, target_is_directory=True)
    shared = ROOT.parent / "shared"
    if shared.is_dir():
        (tmp_path / "shared").symlink_to(shared, target_is_directory=True)
    spec = tmp_path / "blocks.json"
    spec.write_text(to_json(_page_blocks(page)), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_docs_blocks.py"), str(spec)],
        cwd=clone,
        env=docs_env,
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, (
        f"{page}: a block failed\n--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
    )
