"""Make docs/screenshot.png: the demo (devnet + real worker + bot) driven from its chat page in headless Chromium.

Run: .venv/bin/python docs/screenshot.py   (needs Debian's chromium; about a minute: the worker runs on CPU).
It starts `python -m devnet demo --app real` in a temporary folder, uploads scikit-image's astronaut photo as
the demo user, waits for the segmented picture, and saves the page as docs/screenshot.png.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshot.png"
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def shoot(chat_url: str, photo: Path, shot: Path) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = await browser.new_page(viewport={"width": 760, "height": 1000})
        await page.goto(chat_url)
        await page.wait_for_function("document.querySelector('#bot').options.length > 0")
        await page.fill("#text", "/balance")
        await page.click("#send")
        await page.set_input_files("#file", str(photo))
        await page.select_option("#kind", "photo")
        await page.click("#upload")
        await page.locator("#log .msg:not(.me)", has_text="Charged").last.wait_for(timeout=300_000)
        await page.wait_for_function("[...document.querySelectorAll('#log img')].every(i => i.complete)")
        await page.wait_for_timeout(1500)
        await page.screenshot(path=str(shot))
        await browser.close()


def main() -> int:
    import skimage.data

    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "astronaut.jpg"
        Image.fromarray(skimage.data.astronaut()).save(photo, quality=90)
        demo = subprocess.Popen(
            [sys.executable, "-m", "devnet", "demo", "--data", str(Path(tmp) / "demo")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            url = None
            for line in demo.stdout:  # type: ignore[union-attr]
                print(line, end="")
                found = re.search(r"chat page\s+(\S+)", line)
                if found:
                    url = found.group(1)
                    break
            if url is None:
                return 1
            shot = Path(tmp) / "shot.png"
            asyncio.run(shoot(url, photo, shot))
            Image.open(shot).convert("RGB").quantize(colors=192).save(OUT, optimize=True)
            print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
