"""What a person reads: random weights said in words, one statement of the charge, amounts in RLC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot import texts
from bot.results import made_with_random_weights, read_detections
from tests.fixtures_bot import bot_on


def _result_folder(tmp_path: Path, random_weights: bool | None) -> Path:
    """A result folder as the worker writes it (detections.json with its model block)."""
    model = {"name": "Mask R-CNN (matterport) COCO", "backbone": "resnet101"}
    if random_weights is not None:
        model["random_weights"] = random_weights
    doc = {
        "model": model,
        "count": 2,
        "detections": [{"class_name": "bench", "score": 0.7}, {"class_name": "handbag", "score": 0.71}],
    }
    (tmp_path / "detections.json").write_text(json.dumps(doc))
    return tmp_path


@pytest.mark.parametrize("flag", [True, False, None])
def test_the_caption_says_random_weights_in_words_only_when_the_result_says_so(tmp_path: Path, flag) -> None:
    folder = _result_folder(tmp_path, flag)
    names = [d["class_name"] for d in read_detections(folder)]
    text = texts.result_caption(
        names, random_weights=made_with_random_weights(folder), task=150_000_000, fee=10_000_000
    )
    if flag:
        assert text.startswith("⚠️ Random weights: these shapes mean nothing.")
        assert "random too: 1 bench, 1 handbag" in text  # the list is never the whole answer
    else:
        assert text.startswith("1 bench, 1 handbag") and "andom" not in text
    assert text.count("Charged") == 1 and text.endswith("Charged 0.16 RLC (task 0.15 RLC + fee 0.01 RLC).")
    assert "<" not in text  # captions go without a parse mode


def test_unreadable_detections_are_not_random_weights(tmp_path: Path) -> None:
    assert not made_with_random_weights(tmp_path)  # missing
    (tmp_path / "detections.json").write_text('{"model": {"random_weights": "yes"}}')
    assert not made_with_random_weights(tmp_path)  # only a JSON true counts
    (tmp_path / "detections.json").write_text("[not json")
    assert not made_with_random_weights(tmp_path)


@pytest.mark.asyncio(loop_scope="session")
async def test_start_says_random_weights_when_the_bot_is_told(devnet_module, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path, demo_random_weights=True) as bn:
        user = bn.new_user()
        bn.tg.inject_command(user, "/start")
        msg = await bn.wait_for_text(user, "Hello")
        assert "random weights" in msg.text and "mean nothing" in msg.text
        assert "at most 0.16 RLC" in msg.text and "fee of 0.01 RLC" in msg.text
    async with bot_on(devnet_module, tmp_path / "plain") as bn:
        user = bn.new_user()
        bn.tg.inject_command(user, "/start")
        msg = await bn.wait_for_text(user, "Hello")
        assert "random weights" not in msg.text


def test_a_jobs_line_names_an_album_and_its_fees(tmp_path: Path) -> None:
    from bot import texts
    from ledger import Ledger

    with Ledger(tmp_path / "b.db") as book:
        book.grant("g", 7, 10**9, "")
        single = book.create_job("c7m1", 7, 7, 160_000_000)
        album = book.create_job("c7g99", 7, 7, 175_000_000, options={"album": {"inputs": ["a", "b", "c"]}})
        assert "album" not in texts.job_line(single)
        assert texts.job_line(album).endswith("· album of 3")
