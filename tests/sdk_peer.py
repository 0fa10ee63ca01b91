"""Running a node script against the official JS peers (the iExec SDK 9.0.1, ethers, kubo-rpc-client) that
`npm install` puts in devnet/node_modules: the one place the SDK-peer tests start `node`.

`await run_sdk_script(script, env)` runs a script of tests/js (a Path) or a script given as source text
(written to a temporary .mjs file), with `SDK` (the SDK's dist/esm/lib/index.js) and the caller's variables in
its environment, waits for it at most `timeout` seconds and returns the JSON of the last line it printed. A
script that fails, hangs or prints no JSON fails the test with the end of node's stderr.

A missing node or npm module skips the test on a developer's machine; with CI=true it fails the test (CI
installs every tool, so a skip there would be a peer check that silently did not run; see tests/conftest.py).

Must never: talk to anything but what the caller's env names (the scripts reach loopback servers only), or
leave a node process behind (a script that outlives its timeout is killed).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "devnet/node_modules"
SDK = NODE_MODULES / "iexec/dist/esm/lib/index.js"
SDK_SOURCES = NODE_MODULES / "iexec/src"
KUBO = NODE_MODULES / "kubo-rpc-client/dist/src/index.js"
ETHERS = NODE_MODULES / "ethers/lib.esm/index.js"
JS = ROOT / "tests/js"
#: how much of node's stderr a failure shows (the end: where the error is)
STDERR_TAIL = 3000


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> NoReturn:
    """Skip the test for a missing tool; with CI=true, fail it (CI installs every tool)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing peer tool is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def require_node(needs: Iterable[Path] = (SDK,)) -> str:
    """The path of `node`, once it and every module file in `needs` are there (else `missing`)."""
    node = shutil.which("node")
    if node is None:
        missing("node is not installed")
    for module in needs:
        if not module.exists():
            name = module.relative_to(NODE_MODULES).parts[0] if module.is_relative_to(NODE_MODULES) else module
            missing(f"npm install has not put {name} in devnet/node_modules")
    return node


def _tail(data: bytes) -> str:
    return data.decode(errors="replace")[-STDERR_TAIL:]


async def run_sdk_script(
    script: Path | str,
    env: Mapping[str, str] | None = None,
    *,
    needs: Iterable[Path] = (SDK,),
    timeout: float = 120,
    stdin: str | None = None,
) -> Any:
    """Run `script` (a file, or .mjs source text) with node; return the JSON of its last stdout line.

    The script's environment is ours plus `SDK` plus `env`; `stdin`, if given, is its standard input.
    """
    node = require_node(needs)
    with tempfile.TemporaryDirectory(prefix="sdk-peer-") as tmp:
        if isinstance(script, str):
            path = Path(tmp) / "peer.mjs"
            path.write_text(script)
            name = "an inline script"
        else:
            path, name = script, script.name
        proc = await asyncio.create_subprocess_exec(
            node,
            str(path),
            env={**os.environ, "SDK": SDK.as_posix(), **(env or {})},
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(None if stdin is None else stdin.encode()), timeout=timeout
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail(f"node {name} did not finish within {timeout:g} s (killed)")
    if proc.returncode != 0:
        pytest.fail(f"node {name} exited with status {proc.returncode}; its stderr ends with:\n{_tail(err)}")
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail(
            f"node {name} printed no JSON line; stdout ends with:\n{_tail(out)}\nstderr ends with:\n{_tail(err)}"
        )
