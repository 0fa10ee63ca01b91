"""tests/sdk_peer.py: the node runner of the SDK-peer tests fails a test loudly (node's stderr shown), never
passes one whose script broke, and turns a missing tool into a failure under CI=true."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sdk_peer import NODE_MODULES, require_node, run_sdk_script

ABSENT = NODE_MODULES / "no-such-module/index.js"


def test_a_missing_module_skips_on_a_laptop_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="npm install has not put no-such-module"):
        require_node((ABSENT,))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: a missing peer tool is a failure"):
        require_node((ABSENT,))


def test_a_missing_node_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no node on this PATH
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="node is not installed"):
        require_node(())


@pytest.mark.slow  # node
async def test_the_last_json_line_comes_back_with_env_and_stdin() -> None:
    script = (
        "const chunks = [];\n"
        "for await (const c of process.stdin) chunks.push(c);\n"
        "console.log('progress, not JSON');\n"
        "console.log(JSON.stringify({ who: process.env.WHO, sdk: process.env.SDK, got: Buffer.concat(chunks)"
        ".toString() }));\n"
    )
    seen = await run_sdk_script(script, {"WHO": "peer"}, needs=(), stdin="hello", timeout=60)
    assert seen["who"] == "peer" and seen["got"] == "hello" and seen["sdk"].endswith("iexec/dist/esm/lib/index.js")


@pytest.mark.slow  # node
async def test_a_failing_script_fails_the_test_with_its_stderr() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"exited with status 3(.|\n)*the peer refused"):
        await run_sdk_script("console.error('the peer refused'); process.exit(3);", needs=(), timeout=60)
    with pytest.raises(pytest.fail.Exception, match="printed no JSON line"):
        await run_sdk_script("console.log('done');", needs=(), timeout=60)


@pytest.mark.slow  # node
async def test_a_hanging_script_is_killed_at_its_timeout() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"did not finish within 1 s \(killed\)"):
        await run_sdk_script("setInterval(() => {}, 1000);", needs=(), timeout=1)
