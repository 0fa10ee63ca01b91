"""`python -m devnet demo` as a new user meets it: TDX deals by default, as on iExec's testnet.

The demo runs in its own process group (the fast test app); the start-up summary names the SMS and says
the tasks run as TDX deals; /start tells the TDX privacy terms (simulated here); a phone-size photo sent
through the chat page comes back with its caption; on chain the deal carries the TDX tag, its params name a
requester secret and result encryption; the bytes the workerpool fetched from the input URL are not the
photo (only the SMS's key opens them, to the picture the bot published) and the archive it stored was
encrypted. Then Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from web3 import Web3

from devnet.deploy import hub_abi
from tests.fixtures_bot import phone_photo
from tests.test_demo_sigint import BOT, USER, _books, _bot_answers, _ctrl_c, _demo_up, _wait_for

JPEG, PNG = b"\xff\xd8\xff", b"\x89PNG"


def _bot_photo(url: str, after: int, limit: float = 120.0) -> dict[str, Any]:
    """The first photo (or document) the bot sends the demo user after message `after`."""
    with httpx.Client(base_url=f"{url}/_chat/{BOT}", timeout=40) as client:
        changes, deadline = 0, time.monotonic() + limit
        while time.monotonic() < deadline:
            page = client.get("/messages", params={"chat_id": USER["id"], "after": changes, "wait": 10}).json()
            changes = page["changes"]
            for msg in page["messages"]:
                if msg["from_bot"] and msg["message_id"] > after and msg["kind"] in ("photo", "document"):
                    return dict(msg)
    raise AssertionError("no result picture from the bot")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_demo_runs_a_photo_as_a_tdx_deal_with_an_encrypted_input(tmp_path: Path) -> None:
    from iexec.tee import decrypt_dataset

    data, log = tmp_path / "demo", tmp_path / "demo.log"
    proc, info = _demo_up(data, log)
    try:
        _wait_for("the chat page line", lambda: "chat page" in log.read_text(), proc, log)
        out = log.read_text()
        assert f"SMS         {info['sms']['url']}" in out, out[-3000:]
        assert "tasks run as TDX deals (simulated enclave" in out
        env = dict(line.split("=", 1) for line in (data / "demo-bot.env").read_text().splitlines())
        assert env["TEE_MODE"] == "on" and env["SMS_URL"] == info["sms"]["url"]

        url = info["telegram"]["url"]
        start = _bot_answers(url)
        assert "encrypted before it leaves me" in start and "simulated" in start, start

        sent = phone_photo(3000, 3000, seed=7)
        assert len(sent) > 3 * 1024 * 1024
        with httpx.Client(base_url=f"{url}/_chat/{BOT}", timeout=60) as client:
            reply = client.post(
                "/upload",
                data={"user_id": str(USER["id"]), "first_name": USER["first_name"], "kind": "photo"},
                files={"file": ("IMG_0001.jpg", sent, "image/jpeg")},
            )
            assert reply.status_code == 200, reply.text
            mine = reply.json()["message"]["message_id"]
        result = _bot_photo(url, mine)
        assert "Charged" in (result["text"] or ""), result
        _wait_for(
            "the job delivered", lambda: _books(data, "SELECT state FROM jobs") == [("DELIVERED",)], proc, log, limit=60
        )
        [(deal_id, task_id, input_ref)] = _books(data, "SELECT deal_id, task_id, input_ref FROM jobs")

        # the workerpool ran it as a TEE task and stored an encrypted archive
        task = httpx.get(f"{info['workerpool']['control_url']}/control/tasks/{task_id}", timeout=10).json()
        assert task["state"] == "completed" and task["tee"] is True and task["encrypted"] is True, task
        _wait_for(
            "the task line",
            lambda: "TDX deal, result encrypted to the bot's key" in log.read_text(),
            proc,
            log,
            limit=10,
        )

        # on chain: the TDX tag; the params name the photo's secret and ask for result encryption
        w3 = Web3(Web3.HTTPProvider(info["anvil"]["rpc_url"]))
        hub = w3.eth.contract(address=Web3.to_checksum_address(info["deployment"]["hub"]), abi=hub_abi())
        deal = hub.functions.viewDeal(deal_id).call()
        assert int.from_bytes(bytes(deal[5]), "big") & 0b1001 == 0b1001  # TEE + TDX bits: 0x…09
        params = json.loads(deal[9])
        assert params["iexec_result_encryption"] is True and list(params["iexec_secrets"]) == ["1"]

        # the input the workerpool fetched: not the photo, in no form a viewer opens; the SMS's key opens it
        [input_url] = params["iexec_input_files"]
        served = httpx.get(input_url, timeout=30).content
        middle = len(sent) // 2
        assert not served.startswith((JPEG, PNG)) and sent[middle : middle + 64] not in served
        published = Path(input_ref).read_bytes()
        assert published[len(published) // 2 :][:64] not in served
        sms = json.loads((data / "sms.json").read_text())["requester"]
        [key] = [v for k, v in sms.items() if k.endswith("|" + params["iexec_secrets"]["1"])]
        assert decrypt_dataset(served, base64.b64decode(key)) == published  # positive control
    finally:
        _ctrl_c(proc, log)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert f"stopped; the chain is saved in {data}" in log.read_text()
