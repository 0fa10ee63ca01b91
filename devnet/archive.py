"""The result archive of a devnet task, built from IEXEC_OUT as iexec-worker does (without Docker).

    archive, digest = result_archive(out_dir, exit_code, stdout, stderr)

The archive is a zip of IEXEC_OUT's files at its root plus stdout.txt and stderr.txt. The digest a worker
contributes is the sha256 of the deterministic output named by computed.json; when the app failed (non-zero
exit, or no valid computed.json) an `error.txt` saying why is added and the digest is keccak(archive).
Pure functions of a folder: no network, no chain.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

from eth_utils import keccak

__all__ = ["containerise_computed", "deterministic_digest", "pack", "result_archive"]


def result_archive(out: Path, code: int, stdout: bytes, stderr: bytes) -> tuple[bytes, bytes]:
    """(zip bytes, digest) for an app that exited with `code`; writes out/error.txt when it failed."""
    containerise_computed(out)
    digest = deterministic_digest(out) if code == 0 else None
    if digest is None:
        message = f"the app exited with code {code}" if code else "the app wrote no valid computed.json"
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        (out / "error.txt").write_text(message + (f": {tail[0][:500]}" if tail else "") + "\n")
    archive = pack(out, stdout, stderr)
    return archive, digest if digest is not None else keccak(archive)


def containerise_computed(out: Path) -> None:
    """Rewrite a host path in computed.json to the `/iexec_out/...` an app sees inside its container.

    The devnet runs apps without Docker, so IEXEC_OUT is a host folder; apps that write the absolute
    path they were given (as `worker/` does) would otherwise name a path no result reader accepts.
    """
    path = out / "computed.json"
    try:
        computed = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    declared = computed.get("deterministic-output-path") if isinstance(computed, dict) else None
    host = str(out)
    if isinstance(declared, str) and (declared == host or declared.startswith(host + "/")):
        computed["deterministic-output-path"] = "/iexec_out" + declared[len(host) :]
        path.write_text(json.dumps(computed))


def deterministic_digest(out: Path) -> bytes | None:
    """sha256 of the deterministic output named by computed.json (sorted file hashes for a folder)."""
    try:
        computed = json.loads((out / "computed.json").read_text())
    except (OSError, ValueError):
        return None
    declared = computed.get("deterministic-output-path") if isinstance(computed, dict) else None
    if not isinstance(declared, str) or not declared.startswith("/iexec_out") or computed.get("error-message"):
        return None
    target = (out / declared.removeprefix("/iexec_out").lstrip("/")).resolve()
    if not str(target).startswith(str(out.resolve())) or not target.exists():
        return None
    if target.is_file():
        return hashlib.sha256(target.read_bytes()).digest()
    digests = [hashlib.sha256(p.read_bytes()).digest() for p in sorted(target.rglob("*")) if p.is_file()]
    return hashlib.sha256(b"".join(digests)).digest()


_COMPRESSED = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".zip", ".gz"})


def pack(out: Path, stdout: bytes, stderr: bytes) -> bytes:
    """The result archive: IEXEC_OUT's files at the zip root, then stdout.txt and stderr.txt.

    Files already compressed (PNG, JPEG, ...) are stored: deflating a result picture of several MB again
    saves nothing and took ~0.2 s a task.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(out.rglob("*")):
            if path.is_file() and not path.is_symlink():
                stored = path.suffix.lower() in _COMPRESSED
                zf.write(
                    path,
                    path.relative_to(out).as_posix(),
                    compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED,
                )
        zf.writestr("stdout.txt", stdout[-1_000_000:])
        zf.writestr("stderr.txt", stderr[-1_000_000:])
    return buf.getvalue()
