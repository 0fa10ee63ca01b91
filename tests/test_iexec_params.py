"""Request params are checked against the order's tag as the SDK 9.0.1 checks them (and a little stricter).

TEE-only params (requester secrets, result encryption, dropbox) need the tag's TEE bit; the check is never
skipped, whether params come as a mapping or as a JSON string.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from eth_account import Account

from iexec.errors import ParamsError
from iexec.orders import build_params, build_request_order, tag_from_bits
from tests.sdk_peer import JS, run_sdk_script

SCRIPT = JS / "tee_params.mjs"
ACCOUNT = Account.from_key("0x" + "42" * 32)
APP = "0x" + "ab" * 20
TDX = "0x" + "00" * 31 + "09"
STD = "0x" + "00" * 32
FILES = ["https://gw.example/ipfs/QmX/photo.enc"]


def order(params: Any, tag: Any) -> dict[str, Any]:
    ro = build_request_order(
        app=APP,
        requester=ACCOUNT.address,
        category=0,
        appmaxprice=1,
        workerpoolmaxprice=1,
        params=params,
        job_id="job-1",
        tag=tag,
    )
    return json.loads(ro.params)


TDX_PARAMS = {
    "iexec_args": "a",
    "iexec_input_files": FILES,
    "iexec_secrets": {1: "segbot-job-1"},
    "iexec_result_encryption": True,
}


def test_tdx_params_pass_with_the_tdx_tag_as_mapping_and_as_string() -> None:
    expected = {
        "iexec_args": "a",
        "iexec_input_files": FILES,
        "iexec_secrets": {"1": "segbot-job-1"},
        "iexec_result_encryption": True,
        "iexec_result_storage_provider": "ipfs",
    }
    assert order(TDX_PARAMS, TDX) == expected
    as_json = json.dumps({**TDX_PARAMS, "iexec_secrets": {"1": "segbot-job-1"}})
    assert order(as_json, TDX) == expected
    assert order(as_json, tag_from_bits(tdx=True)) == expected
    assert order(build_params(**TDX_PARAMS), TDX) == expected  # build_params without a tag: shapes only


@pytest.mark.parametrize(
    "params, key",
    [
        ({"iexec_secrets": {1: "s"}}, "iexec_secrets"),
        ('{"iexec_secrets": {"1": "s"}}', "iexec_secrets"),  # the string path is never skipped
        ({"iexec_result_encryption": True}, "iexec_result_encryption"),
        ('{"iexec_result_encryption": true}', "iexec_result_encryption"),
        ({"iexec_result_storage_provider": "dropbox"}, "iexec_result_storage_provider"),
    ],
)
def test_tee_only_params_are_refused_without_the_tee_bit(params: Any, key: str) -> None:
    with pytest.raises(ParamsError, match="TEE") as info:
        order(params, STD)
    assert info.value.key == key


@pytest.mark.parametrize(
    "params, match",
    [
        ('{"iexec_secrets": {"1": "s"}, "evil": 1}', "unknown key"),
        ('{"iexec_secrets": {"0": "s"}}', "positive integers"),
        ('{"iexec_secrets": {"01": "s"}}', "positive integers"),
        ('{"iexec_secrets": {"a": "s"}}', "positive integers"),
        ('{"iexec_secrets": {"1": ""}}', "non-empty"),
        ('{"iexec_secrets": {"1": 5}}', "non-empty"),
        ('{"iexec_secrets": ["s"]}', "must map"),
        ('{"tee": true}', "unknown key"),
    ],
)
def test_malformed_secrets_are_refused_even_with_the_tee_bit(params: str, match: str) -> None:
    with pytest.raises(ParamsError, match=match):
        order(params, TDX)


def test_secret_indexes_are_sorted_and_not_given_twice() -> None:
    assert order({"iexec_secrets": {2: "b", "1": "a"}}, TDX)["iexec_secrets"] == {"1": "a", "2": "b"}
    with pytest.raises(ParamsError, match="twice"):
        order({"iexec_secrets": {1: "a", "1": "b"}}, TDX)


def test_standard_params_still_pass_without_the_tee_bit() -> None:
    assert order({"iexec_args": "x", "iexec_result_encryption": False}, 0) == {
        "iexec_args": "x",
        "iexec_result_encryption": False,
        "iexec_result_storage_provider": "ipfs",
    }


# --- the SDK's own validator as the peer -----------------------------------------------------------

# (params, tag): both the SDK and we give the same verdict on each.
AGREED: list[tuple[Any, str]] = [
    ({"iexec_args": "a", "iexec_input_files": FILES}, STD),
    ({"iexec_args": "a", "iexec_input_files": FILES}, TDX),
    ({"iexec_secrets": {"1": "segbot-job-1"}, "iexec_result_encryption": True}, TDX),
    ({"iexec_secrets": {"1": "a", "2": "b"}}, TDX),
    ({"iexec_secrets": {"1": "s"}}, STD),
    ({"iexec_secrets": {"0": "s"}}, TDX),
    ({"iexec_secrets": {"x": "s"}}, TDX),
    ({"iexec_result_storage_provider": "dropbox"}, STD),
    ({"iexec_result_storage_provider": "dropbox"}, TDX),
    ({"iexec_result_storage_provider": "s3"}, TDX),
    ({"iexec_args": "a", "evil": 1}, STD),
    ({"iexec_args": "a", "evil": 1}, TDX),
]


@pytest.mark.slow
async def test_verdicts_match_the_js_sdks_params_validator() -> None:
    # Where we are deliberately stricter than the SDK (it accepts these): result encryption on a standard
    # task, where no enclave would encrypt anything; an empty secret name (the SDK's check uses
    # Array.find, which misses a falsy ''; the SMS refuses the name anyway).
    stricter: list[tuple[Any, str]] = [({"iexec_result_encryption": True}, STD), ({"iexec_secrets": {"1": ""}}, TDX)]
    cases = AGREED + stricter
    # The strict check reads a signed order's params, which always name the storage provider (the SDK's
    # createRequestorder and our builder both write the default "ipfs"): give it one where a case has none.
    env = {
        "CASES": json.dumps([{"params": {"iexec_result_storage_provider": "ipfs", **p}, "tag": t} for p, t in cases]),
    }
    sdk = await run_sdk_script(SCRIPT, env, timeout=60)
    for (params, tag), verdict in zip(AGREED, sdk[: len(AGREED)], strict=True):
        try:
            ours = order(params, tag)
        except ParamsError:
            ours = None
        # the verdict of the SDK's preflight check (strict: it refuses unknown keys, which
        # createRequestorder would silently drop)
        assert (ours is not None) == verdict["strictOk"], (params, tag, verdict)
        if ours is not None:
            assert ours == verdict["value"], (params, tag)
    for (params, tag), verdict in zip(stricter, sdk[len(AGREED) :], strict=True):
        assert verdict["ok"] is True and verdict["strictOk"] is True, (params, verdict)
        with pytest.raises(ParamsError):
            order(params, tag)
