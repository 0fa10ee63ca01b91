"""A Python client for the iExec protocol (PoCo v6, Diamond hub), usable on its own.

Modules: `orders` (order types, EIP-712 hashing/signing, builders), `hub` (async web3 client of the hub),
`tx` (the one nonce-owning transaction sender), `watch` (event-based task tracking), `pool` (workerpool-side
calls), `market` (market API client), `results` (result download and checks), `networks` (presets),
`tee` (TDX: dataset-format encryption, the result key), `sms` (Secret Management Service client), `retry`
(the one retry policy), `deposits` (RLC transfers to one address, handed over once final), `link` (proof that
a user owns an address: EIP-712 / personal_sign).
This package imports nothing else of the project and never logs a private key or a raw transaction.
Every error it raises derives from `iexec.IExecError` (see `iexec.errors`, re-exported here).
"""

from __future__ import annotations

from iexec import errors as _errors
from iexec.errors import *  # noqa: F403 - the exception tree is part of the package's surface
from iexec.tee import RESULT_KEY_SECRET, ResultKey

__all__ = [*_errors.__all__, "ResultKey", "RESULT_KEY_SECRET"]
