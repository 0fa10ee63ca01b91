"""Orders: EIP-712 hashes equal eth-account's (and, in test_iexec_hub.py, the hub's and the JS SDK's),
signatures recover, market JSON round-trips, bad input raises typed errors naming the field."""

from __future__ import annotations

import json

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from iexec.errors import OrderError, ParamsError
from iexec.orders import (
    NULL_DATASET_ORDER,
    UINT256_MAX,
    ZERO_ADDRESS,
    AppOrder,
    DatasetOrder,
    Domain,
    RequestOrder,
    Tag,
    WorkerpoolOrder,
    build_params,
    build_request_order,
    tag_from_bits,
    tag_to_int,
    tags_compatible,
)

HUB = "0x5FC8d32690cc91D4c39d9d3abcBD16989F875707"
DOMAIN = Domain(chain_id=31337, verifying_contract=HUB)
ACCOUNT = Account.from_key("0x" + "42" * 32)
APP = "0x" + "a1" * 20
POOL = "0x" + "b2" * 20


def eth_account_hash(order, domain: Domain = DOMAIN) -> bytes:
    message = encode_typed_data(full_message=order.to_typed_data(domain))
    return keccak(b"\x19" + message.version + message.header + message.body)


def app_order(**kw) -> AppOrder:
    base = dict(
        app=APP,
        appprice=7,
        volume=1000,
        tag=0,
        datasetrestrict=ZERO_ADDRESS,
        workerpoolrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=b"\x01" * 32,
    )
    return AppOrder(**{**base, **kw})


def pool_order(**kw) -> WorkerpoolOrder:
    base = dict(
        workerpool=POOL,
        workerpoolprice=3,
        volume=10,
        tag=tag_from_bits(tdx=True),
        category=2,
        trust=1,
        apprestrict=ZERO_ADDRESS,
        datasetrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt="0x" + "02" * 32,
    )
    return WorkerpoolOrder(**{**base, **kw})


def request_order(**kw) -> RequestOrder:
    return build_request_order(
        app=APP,
        requester=ACCOUNT.address,
        category=2,
        appmaxprice=7,
        workerpoolmaxprice=3,
        params={"iexec_args": "--fast"},
        job_id="job-1",
        **kw,
    )


def test_domain_defaults_and_separator() -> None:
    assert (DOMAIN.name, DOMAIN.version) == ("iExecODB", "5.0.0")
    assert len(DOMAIN.separator) == 32


@pytest.mark.parametrize("make", [app_order, pool_order, request_order, lambda: NULL_DATASET_ORDER])
def test_hash_equals_eth_account(make) -> None:
    order = make()
    assert order.hash(DOMAIN) == eth_account_hash(order)
    other = Domain(chain_id=421614, verifying_contract=HUB)
    assert order.hash(other) != order.hash(DOMAIN)


def test_sign_recovers_and_matches_eth_account_signature() -> None:
    order = request_order()
    signed = order.sign(ACCOUNT, DOMAIN)
    assert isinstance(signed, RequestOrder) and len(signed.sign) == 65
    assert signed.signer(DOMAIN) == ACCOUNT.address
    expected = Account.sign_typed_data(ACCOUNT.key, full_message=order.to_typed_data(DOMAIN)).signature
    assert bytes(signed.sign) == bytes(expected)
    # the same signature from a hex key; the hash ignores the signature
    assert order.sign("0x" + "42" * 32, DOMAIN) == signed
    assert signed.hash(DOMAIN) == order.hash(DOMAIN)
    assert not signed.is_signed_by(POOL, DOMAIN)


def test_request_order_builder_is_deterministic_and_open() -> None:
    a, b = request_order(), request_order()
    assert a == b and a.hash(DOMAIN) == b.hash(DOMAIN)
    assert a.workerpool == ZERO_ADDRESS and a.dataset == ZERO_ADDRESS and a.volume == 1
    assert a.beneficiary == ACCOUNT.address and a.callback == ZERO_ADDRESS
    assert a.salt == keccak(b"job-1")
    other = build_request_order(
        app=APP,
        requester=ACCOUNT.address,
        category=2,
        appmaxprice=7,
        workerpoolmaxprice=3,
        params={"iexec_args": "--fast"},
        job_id="job-2",
    )
    assert other.hash(DOMAIN) != a.hash(DOMAIN)


def test_market_json_round_trip() -> None:
    for order in (
        app_order().sign(ACCOUNT, DOMAIN),
        pool_order().sign(ACCOUNT, DOMAIN),
        request_order().sign(ACCOUNT, DOMAIN),
        NULL_DATASET_ORDER,
    ):
        data = json.loads(json.dumps(order.to_market_json()))
        assert isinstance(data.get("volume"), int) and data["tag"].startswith("0x")
        back = type(order).from_market_json(data)
        assert back == order and back.hash(DOMAIN) == order.hash(DOMAIN)
    assert NULL_DATASET_ORDER.to_market_json()["sign"] == "0x"


def test_market_json_wrong_shape() -> None:
    data = pool_order().to_market_json()
    del data["category"]
    with pytest.raises(OrderError, match="category"):
        WorkerpoolOrder.from_market_json(data)
    with pytest.raises(OrderError):
        AppOrder.from_market_json(["not", "an", "object"])  # type: ignore[arg-type]  # the wrong type is the point
    data = app_order().to_market_json() | {"appprice": "1e9"}
    with pytest.raises(OrderError, match="appprice"):
        AppOrder.from_market_json(data)


def test_accepts_every_protocol_value() -> None:
    big = app_order(appprice=UINT256_MAX, volume=UINT256_MAX, tag="0x" + "ff" * 32, salt=UINT256_MAX)
    assert big.hash(DOMAIN) == eth_account_hash(big)
    weird = request_order()
    weird = RequestOrder(
        **{**{f: getattr(weird, f) for f, _ in RequestOrder.FIELDS}, "params": "not json \u00e9\u2603 \x00"}
    )
    assert weird.hash(DOMAIN) == eth_account_hash(weird)
    lower = app_order(app=APP.lower(), salt=bytearray(32))
    assert lower.app == to_checksum_address(APP) and lower.salt == bytes(32)


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("app", "0x1234", "app"),
        ("app", 123, "app"),
        ("app", "0xA1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1", "checksum"),
        ("appprice", -1, "appprice"),
        ("appprice", UINT256_MAX + 1, "uint256"),
        ("appprice", 1.5, "integer"),
        ("appprice", True, "integer"),
        ("volume", "10", "volume"),
        ("tag", b"\x01" * 31, "32 bytes"),
        ("tag", "0x" + "00" * 33, "32 bytes"),
        ("tag", "0xzz", "hex"),
        ("tag", "00" * 32, "0x"),
        ("salt", None, "salt"),
    ],
)
def test_bad_fields_raise_typed_error_naming_the_field(field, value, needle) -> None:
    with pytest.raises(OrderError, match=needle) as info:
        app_order(**{field: value})
    assert info.value.field == field


def test_bad_domain_and_key() -> None:
    with pytest.raises(OrderError, match="verifying_contract"):
        Domain(chain_id=1, verifying_contract="hub")
    with pytest.raises(OrderError, match="private_key"):
        app_order().sign("0x1234", DOMAIN)
    with pytest.raises(OrderError, match="private_key"):
        app_order().sign("0x" + "00" * 32, DOMAIN)


def test_tags() -> None:
    assert tag_from_bits(tee=True, tdx=True) == bytes(31) + b"\x09"
    assert tag_to_int(tag_from_bits(gpu=True)) == Tag.GPU == 256
    assert tag_to_int("0x" + "00" * 31 + "09") == Tag.TEE | Tag.TDX
    assert tags_compatible(tag_from_bits(tdx=True, gpu=True), tag_from_bits(tdx=True), 0)
    assert not tags_compatible(0, tag_from_bits(gpu=True))


def test_build_params_only_protocol_keys() -> None:
    params = json.loads(
        build_params(iexec_args="a b", iexec_input_files=["https://h/x.png"], iexec_result_encryption=False)
    )
    assert params == {
        "iexec_args": "a b",
        "iexec_input_files": ["https://h/x.png"],
        "iexec_result_storage_provider": "ipfs",
        "iexec_result_encryption": False,
    }
    with pytest.raises(ParamsError, match="iexec_argz") as info:
        build_params(iexec_argz="x")
    assert info.value.key == "iexec_argz"
    with pytest.raises(ParamsError, match="iexec_input_files"):
        build_params(iexec_input_files="https://h/x.png")
    with pytest.raises(ParamsError, match="URL"):
        build_params(iexec_input_files=["file:///etc/passwd"])
    with pytest.raises(ParamsError, match="storage"):
        build_params(iexec_result_storage_provider="s3")
    with pytest.raises(ParamsError, match="true or false"):
        build_params(iexec_result_encryption="no")
    with pytest.raises(ParamsError, match="unknown"):
        build_request_order(
            app=APP,
            requester=ACCOUNT.address,
            category=0,
            appmaxprice=1,
            workerpoolmaxprice=1,
            params='{"evil": 1}',
            job_id="j",
        )
    with pytest.raises(ParamsError, match="not JSON"):
        build_request_order(
            app=APP,
            requester=ACCOUNT.address,
            category=0,
            appmaxprice=1,
            workerpoolmaxprice=1,
            params="plain args",
            job_id="j",
        )


@settings(max_examples=40, deadline=None)
@given(
    price=st.integers(0, UINT256_MAX),
    tag=st.binary(min_size=32, max_size=32),
    params=st.text(max_size=40),
    salt=st.binary(min_size=32, max_size=32),
)
def test_hash_property(price: int, tag: bytes, params: str, salt: bytes) -> None:
    order = RequestOrder(
        app=APP,
        appmaxprice=price,
        dataset=ZERO_ADDRESS,
        datasetmaxprice=0,
        workerpool=POOL,
        workerpoolmaxprice=price,
        requester=ACCOUNT.address,
        volume=1,
        tag=tag,
        category=0,
        trust=price,
        beneficiary=ACCOUNT.address,
        callback=ZERO_ADDRESS,
        params=params,
        salt=salt,
    )
    assert order.hash(DOMAIN) == eth_account_hash(order)
    assert DatasetOrder.from_market_json(NULL_DATASET_ORDER.to_market_json()) == NULL_DATASET_ORDER
