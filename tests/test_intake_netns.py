"""bot.intake SSRF tests where NAMES resolve to private, link-local or metadata addresses.

Each test runs a script inside a fresh network namespace (tests/netns) whose only interface is `lo`,
carrying 10.1.2.3, 169.254.169.254, 100.64.0.7, fd00::1 and a public-looking 1.2.3.4, with an /etc/hosts
of its own. The script serves an image on every one of those addresses, calls the real `fetch_image` and
prints, per case, what happened and which addresses received a request. No packet leaves the namespace.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.netns import run_in_netns, skip_reason

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(skip_reason() is not None, reason=f"network namespaces: {skip_reason()}"),
]

ROOT = Path(__file__).resolve().parent.parent
ADDRESSES = ["10.1.2.3", "169.254.169.254", "100.64.0.7", "1.2.3.4", "fd00::1"]
HOSTS = {
    "evil.test": ["10.1.2.3"],
    "meta.test": ["169.254.169.254"],
    "cgnat.test": ["100.64.0.7"],
    "ula.test": ["fd00::1"],
    "mapped.test": ["::ffff:10.1.2.3"],
    "public.test": ["1.2.3.4"],
    "mixed.test": ["1.2.3.4", "10.1.2.3"],  # one good address does not excuse a bad one
}

SCRIPT = r"""
import asyncio, io, json, sys
sys.path.insert(0, ROOT)
from aiohttp import web
from PIL import Image
from bot.errors import InputRejected
from bot.intake import fetch_image
from bot.settings import Settings

buf = io.BytesIO(); Image.new("RGB", (32, 32), (9, 99, 199)).save(buf, "JPEG"); JPEG = buf.getvalue()
hits = []

async def image(request):
    hits.append(request.transport.get_extra_info("sockname")[0])
    return web.Response(body=JPEG, content_type="image/jpeg")

async def redirect(request):
    hits.append(request.transport.get_extra_info("sockname")[0])
    raise web.HTTPFound(request.query["to"])

async def main():
    app = web.Application()
    app.router.add_get("/img.jpg", image)
    app.router.add_get("/latest/meta-data/", image)
    app.router.add_get("/redirect", redirect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for address in ADDRESSES:
        await web.TCPSite(runner, address, 8080).start()
    results = {}
    for name, url, settings in CASES:
        hits.clear()
        try:
            data = await fetch_image(url, Settings(_env_file=None, **settings) if settings else None, timeout=10.0)
            outcome = "ok" if data == JPEG else "wrong bytes"
        except InputRejected as exc:
            outcome = "rejected: " + str(exc)
        results[name] = {"outcome": outcome, "hits": sorted(hits)}
    await runner.cleanup()
    print(json.dumps(results))

asyncio.run(main())
"""

CASES = [
    ("public", "http://public.test:8080/img.jpg", None),
    ("private name", "http://evil.test:8080/img.jpg", None),
    ("metadata name", "http://meta.test:8080/latest/meta-data/", None),
    ("metadata literal", "http://169.254.169.254:8080/latest/meta-data/", None),
    (
        "metadata name, everything allowed",
        "http://meta.test:8080/latest/meta-data/",
        {"url_allow_loopback": True, "url_allow_private": True},
    ),
    ("cgnat name", "http://cgnat.test:8080/img.jpg", None),
    ("ula name", "http://ula.test:8080/img.jpg", None),
    ("mapped name", "http://mapped.test:8080/img.jpg", {"url_allow_private": True}),
    ("mixed name", "http://mixed.test:8080/img.jpg", None),
    ("redirect to private name", "http://public.test:8080/redirect?to=http://evil.test:8080/img.jpg", None),
    ("redirect to metadata", "http://public.test:8080/redirect?to=http://169.254.169.254:8080/latest/meta-data/", None),
    ("redirect to ula", "http://public.test:8080/redirect?to=http://[fd00::1]:8080/img.jpg", None),
    ("redirect to public", "http://public.test:8080/redirect?to=http://public.test:8080/img.jpg", None),
    ("private allowed by setting", "http://evil.test:8080/img.jpg", {"url_allow_private": True}),
]


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, object]]:
    script = f"ROOT = {str(ROOT)!r}\nADDRESSES = {ADDRESSES!r}\nCASES = {CASES!r}\n" + SCRIPT
    return run_in_netns(script, addresses=ADDRESSES, hosts=HOSTS, timeout=120, cwd=ROOT)


def test_public_name_is_fetched(results: dict) -> None:
    """The namespace works: a public-looking name on the namespace's loopback is fetched."""
    assert results["public"] == {"outcome": "ok", "hits": ["1.2.3.4"]}
    assert results["redirect to public"] == {"outcome": "ok", "hits": ["1.2.3.4", "1.2.3.4"]}


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("private name", "private network"),
        ("metadata name", "link-local"),
        ("metadata literal", "link-local"),
        ("metadata name, everything allowed", "link-local"),
        ("cgnat name", "shared"),
        ("ula name", "private network"),
        ("mapped name", "IPv4-mapped"),
        ("mixed name", "private network"),
    ],
)
def test_names_resolving_to_internal_addresses_are_refused_before_connecting(
    results: dict, case: str, reason: str
) -> None:
    assert results[case]["outcome"].startswith("rejected: "), results[case]
    assert reason in results[case]["outcome"]
    assert results[case]["hits"] == []  # nothing ever reached the internal server


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("redirect to private name", "private network"),
        ("redirect to metadata", "link-local"),
        ("redirect to ula", "private network"),
    ],
)
def test_public_name_redirecting_inside_is_refused(results: dict, case: str, reason: str) -> None:
    assert reason in results[case]["outcome"]
    assert results[case]["hits"] == ["1.2.3.4"]  # only the redirecting public server was contacted


def test_private_allowed_only_by_explicit_setting(results: dict) -> None:
    assert results["private allowed by setting"] == {"outcome": "ok", "hits": ["10.1.2.3"]}
