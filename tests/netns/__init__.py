"""Run a Python script inside a fresh network namespace with only a loopback interface.

For SSRF tests: the namespace gets extra addresses on `lo` (e.g. 10.1.2.3, 169.254.169.254, a public-looking
1.2.3.4) and its own /etc/hosts (bind-mounted in a private mount namespace), so names can resolve to private,
link-local or "public" addresses while every packet stays on the namespace's loopback. The script checks
first that `lo` is its only interface and refuses to run otherwise: nothing can reach a real network.

Needs `unshare -n -m` (root or user namespaces) and `ip`; `skip_reason()` says why it cannot run here.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: put at the top of every script run in a namespace: abort unless `lo` is the only interface
GUARD = (
    "import socket as _s, sys as _y\n"
    "if [n for _, n in _s.if_nameindex()] != ['lo']:\n"
    "    _y.exit('not inside an isolated network namespace: refusing to run')\n"
)


@functools.cache
def skip_reason() -> str | None:
    """None when namespaces work here, else why the tests that need them are skipped."""
    for tool in ("unshare", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    try:
        proc = subprocess.run(
            ["unshare", "-n", "-m", "sh", "-c", "ip link set lo up && ip addr add 10.1.2.3/32 dev lo"],
            capture_output=True,
            timeout=20,
            text=True,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`unshare -n -m` failed: {exc}"
    if proc.returncode != 0:
        return f"`unshare -n -m` is not permitted here: {proc.stderr.strip()[:200]}"
    return None


def run_in_netns(
    script: str,
    *,
    addresses: Sequence[str] = (),
    hosts: Mapping[str, Sequence[str]] | None = None,
    timeout: float = 60.0,
    cwd: str | os.PathLike[str] | None = None,
) -> Any:
    """Run `script` (Python source) with this interpreter inside a new network + mount namespace.

    `addresses` are added to `lo` (IPv4 as /32, IPv6 as /128); `hosts` maps a name to the addresses it
    resolves to (several lines per name). The script must print one JSON document on its last stdout line;
    it is returned parsed. Raises AssertionError with the script's stderr when it fails.
    """
    with tempfile.TemporaryDirectory(prefix="netns-") as tmp:
        hosts_file = Path(tmp) / "hosts"
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
        for name, addrs in (hosts or {}).items():
            lines += [f"{addr} {name}" for addr in addrs]
        hosts_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        script_file = Path(tmp) / "script.py"
        script_file.write_text(GUARD + script, encoding="utf-8")
        setup = ["ip link set lo up"]
        for addr in addresses:
            prefix = 128 if ":" in addr else 32
            setup.append(
                f"ip addr add {shlex.quote(addr)}/{prefix} dev lo nodad"
                if ":" in addr
                else f"ip addr add {shlex.quote(addr)}/{prefix} dev lo"
            )
        setup.append(f"mount --bind {shlex.quote(str(hosts_file))} /etc/hosts")
        setup.append(f"exec {shlex.quote(sys.executable)} {shlex.quote(str(script_file))}")
        proc = subprocess.run(
            ["unshare", "-n", "-m", "sh", "-ec", " && ".join(setup)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
        )
    if proc.returncode != 0:
        raise AssertionError(f"namespace script failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    try:
        return json.loads(last)
    except ValueError:
        raise AssertionError(
            f"namespace script printed no JSON:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        ) from None
