"""The local chat page in headless Chromium: a person uploads a photo with a caption and sees the segmented
picture come back; the form is cleared for the next photo and each answer quotes the message it answers.

Debian's /usr/bin/chromium is driven by the `playwright` package (never `playwright install`: no browser
download). The bot is a subprocess on a devnet running the small test app. Skipped, with the reason, when
Chromium is not installed. (The README's picture is made by docs/screenshot.py with the real worker.)
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.fixtures_e2e import E2E

pytestmark = pytest.mark.asyncio(loop_scope="session")
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def street_picture() -> bytes:
    """A small drawn scene (sky, road, a figure) so that the screenshot shows something recognisable."""
    img = Image.new("RGB", (480, 320), (135, 190, 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 220, 480, 320), fill=(90, 90, 95))
    draw.rectangle((40, 120, 150, 220), fill=(200, 80, 60))
    draw.ellipse((260, 90, 300, 130), fill=(240, 200, 160))
    draw.rectangle((262, 130, 298, 215), fill=(40, 60, 160))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


async def test_upload_a_photo_on_the_chat_page_and_see_the_result(e2e: E2E, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.async_api")
    user = e2e.new_user(2 * 10**9)
    await e2e.start_bot()
    picture = tmp_path / "street.jpg"
    picture.write_bytes(street_picture())

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 760, "height": 900})
            await page.goto(f"{e2e.net.telegram_url}/_chat/")
            await page.wait_for_function("document.querySelector('#bot').options.length > 0")
            await page.fill("#uid", str(user.id))
            await page.fill("#uname", "Alice")
            await page.dispatch_event("#uid", "change")
            await page.fill("#text", "/start")
            await page.click("#send")
            await page.locator("#log .msg:not(.me)", has_text="Privacy").first.wait_for(timeout=20_000)
            await page.set_input_files("#file", str(picture))
            await page.fill("#caption", "my street")
            await page.select_option("#kind", "photo")
            await page.click("#upload")
            mine = page.locator("#log .msg.me", has_text="my street")  # the caption under the photo
            await mine.locator("img").first.wait_for(timeout=20_000)
            # the form is ready for the next picture: no file still chosen, no caption left
            assert await page.eval_on_selector("#file", "f => f.files.length") == 0
            assert await page.input_value("#caption") == ""
            # the bot's answer quotes the photo it answers (a thumbnail and "You"); a click goes to it
            quote = page.locator("#log .msg:not(.me) .reply", has_text="You").first
            await quote.locator("img").wait_for(timeout=30_000)
            await quote.click()
            await page.locator("#log .msg.me.flash", has_text="my street").wait_for(timeout=5_000)
            result = page.locator("#log .msg:not(.me) > img")
            await result.first.wait_for(timeout=60_000)
            await page.locator("#log .msg:not(.me)", has_text="Charged").first.wait_for(timeout=30_000)
            await page.wait_for_function(
                "[...document.querySelectorAll('#log .msg img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            await page.locator("#log .msg:not(.me)", has_text="Done").first.wait_for(timeout=30_000)
            await page.screenshot(path=str(tmp_path / "shot.png"), full_page=False)
        finally:
            await browser.close()

    shot = Image.open(tmp_path / "shot.png").convert("RGB")
    assert len(shot.getcolors(1 << 24) or []) > 50  # the page shows pictures, not a blank screen
    [job] = await e2e.wait_terminal(user)
    assert job.state.value == "DELIVERED"
    [reply] = e2e.results(user)
    assert reply.kind == "photo"
    [photo] = [m for m in e2e.tg.conversation(user.id) if m.kind == "photo" and not m.from_bot]
    assert photo.caption == "my street" and reply.reply_to == photo.message_id
    e2e.ledger.audit()


async def test_an_album_then_a_queued_photo_on_the_chat_page(e2e: E2E, tmp_path: Path) -> None:
    """Three pictures chosen at once on the page go as one Telegram album: the bot answers with one album of
    three results (one summary caption) from one job, and its detections button gives one file for the three.
    A photo sent while the user's one slot is taken by the album waits in line: its status message shows its
    place, then it is segmented and delivered too. (The chain is stopped while the photo is sent, so the album
    cannot finish first: the line is certain, not a race.)"""
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.async_api")
    user = e2e.new_user(2 * 10**9)
    e2e.write_env(max_jobs_in_flight=1)
    await e2e.start_bot()
    pictures = []
    for i, size in enumerate([(480, 320), (320, 480), (400, 400)]):
        img = Image.new("RGB", size, (60 + 50 * i, 120, 200))
        ImageDraw.Draw(img).ellipse((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill=(240, 200, 60))
        path = tmp_path / f"pic{i + 1}.jpg"
        img.save(path, "JPEG", quality=85)
        pictures.append(str(path))
    single = tmp_path / "street.jpg"
    single.write_bytes(street_picture())
    assert e2e.net.anvil is not None
    bot_pictures = "#log .msg:not(.me) > img"

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 760, "height": 900})
            await page.goto(f"{e2e.net.telegram_url}/_chat/")
            await page.wait_for_function("document.querySelector('#bot').options.length > 0")
            await page.fill("#uid", str(user.id))
            await page.fill("#uname", "Alice")
            await page.dispatch_event("#uid", "change")
            e2e.net.anvil.freeze()  # the album's job cannot reach the chain: it keeps the user's one slot
            try:
                await page.set_input_files("#file", pictures)
                await page.fill("#caption", "three at once")
                await page.click("#upload")
                await page.locator("#log .msg.me img").nth(2).wait_for(timeout=20_000)
                await page.locator("#log .msg:not(.me)", has_text="album of 3").first.wait_for(timeout=30_000)
                assert await page.eval_on_selector("#file", "f => f.files.length") == 0
                await page.set_input_files("#file", str(single))
                await page.fill("#caption", "and this one")
                await page.click("#upload")
                queued = page.locator("#log .msg:not(.me)", has_text="Queued: 1st in line").first
                await queued.wait_for(timeout=30_000)
                status_id = await queued.get_attribute("id")
                assert await queued.locator(".reply", has_text="and this one").count() == 1  # it answers the photo
            finally:
                e2e.net.anvil.thaw()
            await page.locator("#log .msg:not(.me)", has_text="3 of 3 pictures").first.wait_for(timeout=90_000)
            await page.locator(bot_pictures).nth(2).wait_for(timeout=30_000)
            # the queued photo's status message moves on from its place in line to done, and its result comes
            await page.locator(f"#{status_id}", has_text="Done").wait_for(timeout=90_000)
            await page.locator(bot_pictures).nth(3).wait_for(timeout=30_000)
            # the album's detections button, pressed on the page, brings one file for its three pictures
            button = page.locator("#log .msg:not(.me)", has_text="What was found in each picture").locator("button")
            await button.click()
            await page.locator("#log .msg:not(.me) a", has_text="detections.json").wait_for(timeout=20_000)
            await page.wait_for_function(
                "[...document.querySelectorAll('#log .msg img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            await page.screenshot(path=str(tmp_path / "album.png"), full_page=False)
        finally:
            await browser.close()

    jobs = await e2e.wait_terminal(user, n=2)
    album = next(j for j in jobs if j.options.get("album"))
    photo = next(j for j in jobs if not j.options.get("album"))
    assert album.state.value == "DELIVERED" and len(album.options["album"]["inputs"]) == 3
    assert photo.state.value == "DELIVERED"
    assert photo.state_times["ORDER_SIGNED"] >= album.state_times["DELIVERED"]  # it waited for the album
    replies = [m for m in e2e.tg.conversation(user.id) if m.from_bot and m.kind == "photo"]
    in_album = [m for m in replies if m.api.get("media_group_id")]
    assert len(in_album) == 3 and len({m.api.get("media_group_id") for m in in_album}) == 1
    assert in_album[0].caption.startswith("3 of 3 pictures") and in_album[0].caption.count("Charged") == 1
    sent = [m for m in e2e.tg.conversation(user.id) if not m.from_bot and m.kind == "photo"]
    assert [m.caption for m in sent] == ["three at once", None, None, "and this one"]
    [result] = [m for m in replies if not m.api.get("media_group_id")]
    assert result.reply_to == sent[3].message_id
    e2e.ledger.audit()
