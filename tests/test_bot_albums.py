"""Albums: several photos sent together (one media_group_id) are ONE job, ONE iExec task, ONE album reply.

Fast tests check the books' per-picture refunds, the album manifest reader and the summary caption. The slow
ones run the real bot (python-telegram-bot over HTTP) against the Telegram stand-in on a devnet whose
workerpool runs the test app (which writes the worker's album layout).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bot import texts
from bot.albums import album_job_id
from bot.results import read_album
from devnet import telegram_inject as inject
from devnet.telegram_model import image_size
from ledger import IllegalTransition, Ledger, TransferConflict
from tests.fixtures_bot import ADMIN, BotNet, bot_on, photo_bytes

SIZES = [(320, 240), (240, 320), (300, 300)]


# ------------------------------------------------------------------------------------------- fast


def _charged_album_job(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path / "books.db")
    ledger.grant("g", 7, 1_000)
    ledger.create_job("album", 7, 7, 600)
    ledger.transition("album", "RECEIVED", "ORDER_SIGNED")
    ledger.transition("album", "ORDER_SIGNED", "MATCHING")
    ledger.transition("album", "MATCHING", "MATCHED", app_price=100, workerpool_price=200)
    return ledger


def test_a_failed_picture_is_paid_back_once_and_never_beyond_the_charge(tmp_path: Path) -> None:
    ledger = _charged_album_job(tmp_path)
    with pytest.raises(IllegalTransition):  # nothing charged yet: nothing to pay back
        ledger.refund_part("album", 2, 150, reason="not an image")
    ledger.complete_job("album", "album:post", 300, fee=250)  # task 300 + fee 100 + 3 photos x 50
    assert ledger.balance(7).posted == 1_000 - 550
    ledger.refund_part("album", 2, 183, reason="not an image")
    ledger.refund_part("album", 2, 183, reason="not an image")  # a replay pays nothing more
    assert ledger.balance(7).posted == 1_000 - 550 + 183
    assert ledger.parts_refunded("album") == {2: 183}
    with pytest.raises(TransferConflict):
        ledger.refund_part("album", 2, 184, reason="not an image")
    with pytest.raises(IllegalTransition, match="exceed"):
        ledger.refund_part("album", 3, 400, reason="too much")
    # a refund of the whole job afterwards gives back only what is left of the charge
    ledger.refund_job("album", "album:refund", error="operator refund", from_states=["COMPLETED"])
    assert ledger.balance(7).posted == 1_000
    ledger.audit()


def _manifest(folder: Path, pictures: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "album.json"
    path.write_text(json.dumps({"version": 1, "total": len(pictures), "pictures": pictures}))
    return path


def test_the_album_manifest_is_read_in_order_and_never_trusted(tmp_path: Path) -> None:
    (tmp_path / "result-1.png").write_bytes(photo_bytes(fmt="PNG"))
    (tmp_path / "detections-1.json").write_text(json.dumps({"detections": [{"class_name": "dog"}]}))
    path = _manifest(
        tmp_path,
        [
            {"index": 1, "ok": True, "result": "result-1.png", "detections": "detections-1.json"},
            {"index": 2, "ok": False, "error": "The file is not an image.", "error_kind": "input"},
            {"index": 3, "ok": True, "result": "../../etc/passwd", "detections": "x"},
        ],
    )
    album = read_album(path, 3)
    assert [p.ok for p in album.pictures] == [True, False, False]  # a path outside the folder is a failure
    assert album.pictures[0].detections == [{"class_name": "dog"}]
    assert album.pictures[1].error == "The file is not an image."
    with pytest.raises(ValueError, match="not the 2"):
        read_album(path, 2)


def test_the_album_caption_says_what_each_picture_shows_and_what_failed() -> None:
    text = texts.album_caption(
        [(1, ["dog", "dog"]), (3, [])],
        [(2, "The file is not an image.", 183_000_000)],
        total=3,
        random_weights=False,
        task=300_000_000,
        fee=10_000_000,
        per_photo=5_000_000,
    )
    assert text.startswith("2 of 3 pictures segmented in one iExec task.")
    assert "1. 2 dogs" in text and "3. Nothing recognised" in text
    assert "Picture 2 failed: The file is not an image. Paid back: 0.183 RLC." in text
    assert "Charged 0.325 RLC" in text and "0.183 RLC paid back" in text


def test_an_album_caption_with_random_weights_warns_once_and_always_says_what_was_charged() -> None:
    many = ["bench"] * 30 + ["stop sign"] * 20 + [f"class{i}" for i in range(40)]
    text = texts.album_caption(
        [(i, many) for i in range(1, 11)],
        [],
        total=10,
        random_weights=True,
        task=150_000_000,
        fee=10_000_000,
        per_photo=5_000_000,
    )
    assert text.count("Random weights: these shapes mean nothing") == 1  # once for the album
    assert text.splitlines()[1].startswith("⚠️ Random weights")
    assert "1. 30 benches" in text
    assert len(text) <= 1024  # a Telegram caption
    assert text.endswith("Charged 0.21 RLC (task 0.15 RLC + fee 0.01 RLC + 10 × 0.005 RLC per photo).")
    assert "…" in text  # ten long lists do not fit: the pictures' lines are cut, not the charge


# ------------------------------------------------------------------------------------------- slow


def _album_replies(botnet: BotNet, user: Any) -> list[Any]:
    return [m for m in botnet.sent(user) if m.kind == "photo" and m.api.get("media_group_id")]


async def _deal_params(botnet: BotNet, deal_id: str) -> dict[str, Any]:
    deal = await botnet.bot.chain.hub.view_deal(bytes.fromhex(deal_id.removeprefix("0x")))
    return json.loads(deal.params)


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_an_album_of_three_is_one_task_and_one_album_reply_in_order(devnet_module: Any, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path) as botnet:
        user = botnet.new_user(credit_nrlc=10**9)
        s = botnet.settings
        sent = inject.album(botnet.tg.bot(), user, [photo_bytes(size, seed=i) for i, size in enumerate(SIZES)])
        ack = await botnet.wait_for_text(user, "album of 3")
        assert texts.rlc(s.album_price_nrlc(3)) in (ack.raw_text or "")  # the price, before it is bought
        await botnet.tg.wait_for(lambda: len(_album_replies(botnet, user)) == 3, timeout=90)
        await botnet.settle()
        [job] = botnet.ledger.user_jobs(user.id)
        assert job.id == album_job_id(user.id, sent[0]["media_group_id"])
        assert job.state.value == "DELIVERED", (job.state, job.error)
        assert job.options["album"]["messages"] == [m["message_id"] for m in sent]
        params = await _deal_params(botnet, job.deal_id)
        assert len(params["iexec_input_files"]) == 3  # one deal, one task, the three photos
        [call] = botnet.tg.calls("sendMediaGroup")
        assert call.status == 200
        replies = _album_replies(botnet, user)
        assert [image_size(m.data) for m in replies] == SIZES  # the album's order
        assert len({m.api["media_group_id"] for m in replies}) == 1
        assert replies[0].caption.startswith("3 of 3 pictures segmented") and "Charged" in replies[0].caption
        assert all(m.caption is None for m in replies[1:])
        # an album message cannot carry a button: the detections button comes right after it, answering the
        # album's first photo, and gives one file with what was found in each picture
        [button] = [m for m in botnet.sent(user) if ("detections.json", f"det:{job.id}") in m.buttons()]
        assert button.message_id > replies[-1].message_id and button.reply_to == sent[0]["message_id"]
        botnet.tg.press_button(user, button.message_id, f"det:{job.id}")
        await botnet.tg.wait_for(lambda: any(m.file_name == "detections.json" for m in botnet.sent(user)), 10)
        doc = json.loads(next(m for m in botnet.sent(user) if m.file_name == "detections.json").data)
        assert [p["index"] for p in doc["pictures"]] == [1, 2, 3]
        assert all(p["detections"] and "class_name" in p["detections"][0] for p in doc["pictures"])
        net = devnet_module
        charged = net.config.app_price + net.config.pool_price + s.fee_nrlc + 3 * s.album_photo_fee_nrlc
        assert botnet.ledger.balance(user.id).posted == 10**9 - charged
        assert botnet.ledger.balance(user.id).pending == 0
        botnet.ledger.audit()


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_a_bad_picture_fails_alone_and_is_paid_back_its_share(devnet_module: Any, tmp_path: Path) -> None:
    """The books hold an album job whose 2nd stored photo got damaged on disk (as a restart finds it): the
    worker fails that picture only; the other two come back as one album and the 2nd is paid back."""
    async with bot_on(devnet_module, tmp_path) as first:
        user = first.new_user(credit_nrlc=10**9)
        first.tg.inject_command(user, "/help")
        helped = await first.wait_for_text(user, "/")
        s = first.settings
    job_id = f"c{user.id}gdamaged"
    folder = tmp_path / "uploads" / job_id
    folder.mkdir(parents=True)
    (folder / "1.jpg").write_bytes(photo_bytes(SIZES[0], seed=1))
    (folder / "2.jpg").write_bytes(b"\xff\xd8 this is no longer a picture")
    (folder / "3.jpg").write_bytes(photo_bytes(SIZES[2], seed=3))
    ledger = Ledger(tmp_path / "books.db")
    ledger.create_job(
        job_id,
        user.id,
        user.id,
        s.album_price_nrlc(3),
        user_message_id=helped.reply_to,
        status_message_id=helped.message_id,
        input_ref=str(folder),
        options={
            "args": s.worker_args,
            "album": {
                "messages": [1, 2, 3],
                "inputs": ["1.jpg", "2.jpg", "3.jpg"],
                "photo_fee": s.album_photo_fee_nrlc,
            },
        },
    )
    ledger.close()
    async with bot_on(devnet_module, tmp_path) as botnet:
        await botnet.tg.wait_for(lambda: len(_album_replies(botnet, user)) == 2, timeout=90)
        await botnet.settle()
        job = botnet.ledger.get_job(job_id)
        assert job is not None and job.state.value == "DELIVERED", (job and job.state, job and job.error)
        replies = _album_replies(botnet, user)
        assert [image_size(m.data) for m in replies] == [SIZES[0], SIZES[2]]
        caption = replies[0].caption
        assert caption.startswith("2 of 3 pictures") and "Picture 2 failed:" in caption and "not an image" in caption
        share = botnet.bot.services.pipeline.album_share(job)
        assert texts.rlc(share) in caption
        assert botnet.ledger.parts_refunded(job_id) == {2: share}
        net = devnet_module
        charged = net.config.app_price + net.config.pool_price + s.fee_nrlc + 3 * s.album_photo_fee_nrlc
        assert botnet.ledger.balance(user.id).posted == 10**9 - charged + share
        botnet.ledger.audit()
        botnet.tg.inject_command(ADMIN, "/job", job_id)  # the receipt lists the pictures
        receipt = await botnet.wait_for_text(ADMIN, "Album: 3 pictures")
        assert "2. failed:" in receipt.text and f"paid back {texts.rlc(share)}" in receipt.text
        assert "1. 1 person" in receipt.text and "3 × " in receipt.text


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_a_restart_while_collecting_makes_one_job_with_every_photo(devnet_module: Any, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path, album_quiet_s=30) as first:
        user = first.new_user(credit_nrlc=10**9)
        pipeline = first.bot.services.pipeline
        inject.album(first.tg.bot(), user, [photo_bytes(size, seed=20 + i) for i, size in enumerate(SIZES)])
        await first.tg.wait_for(lambda: pipeline.albums is not None and pipeline.albums.photos_collected() == 3)
        assert len(first.ledger.inbox.pending()) == 3  # kept, not done
    async with bot_on(devnet_module, tmp_path, album_quiet_s=0.5) as botnet:
        await botnet.tg.wait_for(lambda: len(_album_replies(botnet, user)) == 3, timeout=90)
        await botnet.settle()
        [job] = botnet.ledger.user_jobs(user.id)
        assert job.state.value == "DELIVERED" and len(job.options["album"]["inputs"]) == 3
        assert [image_size(m.data) for m in _album_replies(botnet, user)] == SIZES
        acks = [
            m for m in botnet.sent(user) if any("album of 3" in (t or "") for t in [m.text, *(e.text for e in m.edits)])
        ]
        assert len(acks) == 1  # one "got it" with the price, never a second after the restart
        assert botnet.ledger.inbox.pending() == []
        botnet.ledger.audit()


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_more_than_ten_photos_are_refused_and_one_photo_is_an_ordinary_job(
    devnet_module: Any, tmp_path: Path
) -> None:
    async with bot_on(devnet_module, tmp_path, album_quiet_s=0.5) as botnet:
        user = botnet.new_user(credit_nrlc=10**9)
        state = botnet.tg.bot()
        for i in range(11):  # no Telegram app sends this; the bot must still answer clearly
            inject.photo(state, user, photo_bytes(seed=40 + i), media_group_id="4242")
        refusal = await botnet.wait_for_text(user, "at most 10 photos")
        assert "Nothing was charged" in refusal.text
        inject.photo(state, user, photo_bytes(seed=60), media_group_id="4343")
        result = await botnet.result_for(user, timeout=90)
        await botnet.settle()
        [job] = botnet.ledger.user_jobs(user.id)
        assert "album" not in job.options and job.state.value == "DELIVERED"
        assert not result.api.get("media_group_id")
        assert botnet.ledger.inbox.pending() == []


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_an_album_goes_through_a_tdx_deal(devnet_module: Any, tmp_path: Path) -> None:
    from bot.chain_gateway import secret_name

    async with bot_on(devnet_module, tmp_path, tee_mode="on") as botnet:
        user = botnet.new_user(credit_nrlc=10**9)
        inject.album(botnet.tg.bot(), user, [photo_bytes(size, seed=80 + i) for i, size in enumerate(SIZES[:2])])
        await botnet.tg.wait_for(lambda: len(_album_replies(botnet, user)) == 2, timeout=120)
        await botnet.settle()
        [job] = botnet.ledger.user_jobs(user.id)
        assert job.state.value == "DELIVERED", (job.state, job.error)
        params = await _deal_params(botnet, job.deal_id)
        assert len(params["iexec_input_files"]) == 2
        assert params["iexec_secrets"] == {"1": secret_name(job.id)} and params["iexec_result_encryption"] is True
        assert [image_size(m.data) for m in _album_replies(botnet, user)] == SIZES[:2]
        await asyncio.sleep(0)
