"""Task results: location decoding, gateway download with fallback, safe unzip, error-archive detection."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from aiohttp import web

from iexec.errors import ResultDownloadError, ResultLocationError, UnsafeArchive
from iexec.results import (
    ResultLocation,
    decode_results,
    download_result,
    fetch_result,
    read_result,
    safe_unzip,
)
from tests.fixtures_market import make_zip, serve, zero_bomb

CID_V0 = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
CID_V1 = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"


def results_json(location: str, storage: str = "ipfs") -> bytes:
    return json.dumps({"storage": storage, "location": location}).encode()


# --- decode_results ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cid", [CID_V0, CID_V1, "a" * 64])
def test_decode_accepts_ipfs_locations(cid: str) -> None:
    loc = decode_results(results_json(f"/ipfs/{cid}"))
    assert loc == ResultLocation("ipfs", f"/ipfs/{cid}")
    assert loc.cid == cid


def test_decode_accepts_hex_and_text_forms() -> None:
    raw = results_json(f"/ipfs/{CID_V0}")
    assert decode_results("0x" + raw.hex()).cid == CID_V0
    assert decode_results(raw.decode()).cid == CID_V0


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"", "empty"),
        ("0x", "empty"),
        (b"\xff\xfe garbage", "not a JSON"),
        (b"[1, 2]", "not a JSON object"),
        (results_json(f"/ipfs/{CID_V0}", storage="dropbox"), "unsupported result storage"),
        (results_json("https://evil.example/x.zip"), "/ipfs/<cid>"),
        (results_json("/ipfs/../../etc/passwd"), "no valid content id"),
        (results_json("/ipfs/QmTooShort"), "no valid content id"),
        (json.dumps({"storage": "ipfs"}).encode(), "no location"),
        (b"x" * 5000, "more than a location needs"),
    ],
)
def test_decode_refuses_bad_results(raw: bytes | str, words: str) -> None:
    with pytest.raises(ResultLocationError, match=words.replace("(", r"\(")):
        decode_results(raw)


# --- download_result --------------------------------------------------------------------------------


def gateway(behaviour: dict[str, tuple[int, bytes]], hits: list[str]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        assert request.headers.get("Accept") == "application/zip"
        status, body = behaviour.get(request.match_info["cid"], (404, b"not found"))
        return web.Response(status=status, body=body)

    app = web.Application()
    app.router.add_get("/ipfs/{cid}", handler)
    return app


async def test_download_falls_back_from_a_failing_gateway_to_a_good_one() -> None:
    archive = make_zip({"computed.json": b"{}"})
    cid = hashlib.sha256(archive).hexdigest()
    bad_hits: list[str] = []
    good_hits: list[str] = []
    async with (
        serve(gateway({cid: (500, b"boom")}, bad_hits)) as bad,
        serve(gateway({cid: (200, archive)}, good_hits)) as good,
    ):
        body = await download_result(f"/ipfs/{cid}", [bad, good], backoff=0)
    assert body == archive
    assert bad_hits == [f"/ipfs/{cid}"] and good_hits == [f"/ipfs/{cid}"]


async def test_download_retries_rounds_then_gives_a_typed_error() -> None:
    hits: list[str] = []
    async with serve(gateway({}, hits)) as only:
        with pytest.raises(ResultDownloadError, match=r"no gateway delivered.*status 404"):
            await download_result(f"/ipfs/{CID_V0}", [only + "/"], rounds=3, backoff=0)
    assert len(hits) == 3


async def test_download_refuses_content_that_does_not_match_its_sha256_id() -> None:
    cid = "b" * 64
    async with serve(gateway({cid: (200, b"tampered")}, [])) as gw:
        with pytest.raises(ResultDownloadError, match="does not match its id"):
            await download_result(f"/ipfs/{cid}", [gw], rounds=1)


async def test_download_caps_the_size_announced_or_streamed() -> None:
    big = b"x" * 300_000

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(big)
        return resp

    app = web.Application()

    async def send_big(_: web.Request) -> web.Response:
        return web.Response(body=big)

    app.router.add_get(f"/ipfs/{CID_V0}", send_big)
    app.router.add_get(f"/ipfs/{CID_V1}", chunked)
    async with serve(app) as gw:
        with pytest.raises(ResultDownloadError, match="too large"):
            await download_result(f"/ipfs/{CID_V0}", [gw], max_bytes=100_000)
        with pytest.raises(ResultDownloadError, match="too large"):
            await download_result(f"/ipfs/{CID_V1}", [gw], max_bytes=1_000_000)


async def test_download_checks_location_and_gateways_before_any_request() -> None:
    with pytest.raises(ResultLocationError):
        await download_result("/ipns/whatever", ["http://127.0.0.1:9"])
    with pytest.raises(ResultDownloadError, match="http"):
        await download_result(f"/ipfs/{CID_V0}", ["file:///etc"])
    with pytest.raises(ResultDownloadError, match="no IPFS gateway"):
        await download_result(f"/ipfs/{CID_V0}", [])


# --- safe_unzip -------------------------------------------------------------------------------------


def test_unzip_writes_a_normal_archive(tmp_path: Path) -> None:
    archive = make_zip({"computed.json": b'{"a": 1}', "out/seg.png": b"png", "stdout.txt": b"hello"})
    files = safe_unzip(archive, tmp_path / "r")
    assert sorted(p.relative_to(tmp_path / "r").as_posix() for p in files) == [
        "computed.json",
        "out/seg.png",
        "stdout.txt",
    ]
    assert (tmp_path / "r/out/seg.png").read_bytes() == b"png"


@pytest.mark.parametrize(
    "name, words",
    [
        ("../escape.txt", "climbs out"),
        ("a/../../escape.txt", "climbs out"),
        ("/etc/cron.d/evil", "absolute path"),
        ("C:/windows/evil", "absolute path"),
        ("a\\..\\..\\evil", "unsafe name"),
    ],
)
def test_unzip_refuses_paths_that_escape(tmp_path: Path, name: str, words: str) -> None:
    archive = make_zip({"computed.json": b"{}", name: b"evil"})
    with pytest.raises(UnsafeArchive, match=words):
        safe_unzip(archive, tmp_path / "r")
    assert list((tmp_path / "r").iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_unzip_refuses_symlinks(tmp_path: Path) -> None:
    archive = make_zip({"computed.json": b"{}"}, symlinks={"result.png": "/etc/passwd"})
    with pytest.raises(UnsafeArchive, match="symlink"):
        safe_unzip(archive, tmp_path / "r")
    assert list((tmp_path / "r").iterdir()) == []


def test_unzip_stops_a_one_gib_bomb_while_streaming(tmp_path: Path) -> None:
    bomb = zero_bomb()
    assert len(bomb) < 2 << 20  # about 1 MiB on disk for 1 GiB expanded
    with pytest.raises(UnsafeArchive, match="bomb"):
        safe_unzip(bomb, tmp_path / "r", max_total=10 << 30, max_ratio=100)
    assert list((tmp_path / "r").iterdir()) == []
    with pytest.raises(UnsafeArchive, match="size limit"):
        safe_unzip(bomb, tmp_path / "r", max_total=5 << 20, max_ratio=10_000)


def test_unzip_refuses_too_many_files_duplicates_garbage_and_a_used_folder(tmp_path: Path) -> None:
    many = make_zip({f"f{i}.txt": b"x" for i in range(10)})
    with pytest.raises(UnsafeArchive, match="more than 5"):
        safe_unzip(many, tmp_path / "a", max_files=5)
    with pytest.raises(UnsafeArchive, match="not a readable zip"):
        safe_unzip(b"PK\x03\x04 not really", tmp_path / "b")
    safe_unzip(make_zip({"x": b"1"}), tmp_path / "c")
    with pytest.raises(UnsafeArchive, match="not empty"):
        safe_unzip(make_zip({"y": b"1"}), tmp_path / "c")


def test_unzip_detects_a_corrupted_entry(tmp_path: Path) -> None:
    archive = bytearray(make_zip({"data.bin": bytes(range(256)) * 64}))
    start = archive.index(b"data.bin") + len(b"data.bin") + 10
    archive[start : start + 20] = b"\x00" * 20  # damage the deflate stream of the only entry
    with pytest.raises(UnsafeArchive, match="corrupt"):
        safe_unzip(bytes(archive), tmp_path / "r")


# --- read_result ------------------------------------------------------------------------------------


def unpacked(tmp_path: Path, entries: dict[str, bytes]) -> Path:
    dest = tmp_path / "result"
    safe_unzip(make_zip(entries), dest)
    return dest


@pytest.mark.parametrize("prefix", ["", "iexec_out/"])
def test_read_result_finds_the_output_in_both_layouts(tmp_path: Path, prefix: str) -> None:
    computed = {"deterministic-output-path": "/iexec_out/result.png"}
    folder = unpacked(
        tmp_path,
        {
            f"{prefix}computed.json": json.dumps(computed).encode(),
            f"{prefix}result.png": b"PNG",
            "stdout.txt": b"3 persons",
            "stderr.txt": b"warn",
        },
    )
    res = read_result(folder)
    assert res.ok and res.error_message is None
    assert res.deterministic_output == folder / prefix / "result.png"
    assert res.computed == computed
    assert res.stdout == "3 persons" and res.stderr == "warn"


def test_read_result_accepts_a_folder_as_the_output(tmp_path: Path) -> None:
    folder = unpacked(tmp_path, {"computed.json": b'{"deterministic-output-path": "/iexec_out"}', "a.png": b"x"})
    assert read_result(folder).deterministic_output == folder


@pytest.mark.parametrize(
    "entries, words",
    [
        ({"error.txt": b"Docker image pull failed"}, "Docker image pull failed"),
        ({"iexec_out/computed.json": b'{"error-message": "image too big"}'}, "image too big"),
        ({"stdout.txt": b"killed"}, "no computed.json"),
        ({"computed.json": b"{not json"}, "not valid JSON"),
        ({"computed.json": b"[]"}, "not a JSON object"),
        ({"computed.json": b"{}"}, "no deterministic output"),
        ({"computed.json": b'{"deterministic-output-path": "/iexec_out/missing.png"}'}, "no deterministic"),
        ({"computed.json": b'{"deterministic-output-path": "/iexec_out/../../etc/passwd"}'}, "no determin"),
        ({"computed.json": b'{"deterministic-output-path": "/etc/passwd"}'}, "no deterministic"),
    ],
)
def test_read_result_recognises_error_archives(tmp_path: Path, entries: dict[str, bytes], words: str) -> None:
    res = read_result(unpacked(tmp_path, entries))
    assert not res.ok
    assert words in (res.error_message or "")
    assert res.deterministic_output is None


async def test_fetch_result_end_to_end(tmp_path: Path) -> None:
    archive = make_zip(
        {"iexec_out/computed.json": b'{"deterministic-output-path": "/iexec_out/seg.png"}', "iexec_out/seg.png": b"PNG"}
    )
    cid = hashlib.sha256(archive).hexdigest()
    async with serve(gateway({cid: (200, archive)}, [])) as gw:
        res = await fetch_result(results_json(f"/ipfs/{cid}"), [gw], tmp_path / "job1")
    assert res.ok and res.deterministic_output is not None
    assert res.deterministic_output.read_bytes() == b"PNG"
