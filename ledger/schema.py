"""The books' schema as an ordered list of migrations; version N is MIGRATIONS[N-1].

Append new migrations at the end; never edit one that has shipped. This module holds SQL only and must
never touch a connection.
"""

from __future__ import annotations

from collections.abc import Callable

OPERATOR_ACCOUNTS: dict[str, str] = {
    "operator:grants": "source of credit an admin grants to users",
    "operator:deposits": "source of credit from on-chain deposits",
    "operator:iexec_spend": "where reservations go and posts land: RLC paid to iExec",
    "operator:fees": "the bot's fee on each completed job (covers gas)",
    "operator:refund_expense": "source of refunds the operator pays for tasks paid on chain but failed in the app",
}

_V1 = """
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    user_id INTEGER UNIQUE,
    no_overdraft INTEGER NOT NULL CHECK (no_overdraft IN (0, 1)),
    debits_pending INTEGER NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    debits_posted INTEGER NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_pending INTEGER NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    credits_posted INTEGER NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    created_at INTEGER NOT NULL,
    CHECK (no_overdraft = 0 OR debits_posted + debits_pending <= credits_posted),
    CHECK ((user_id IS NULL) = (no_overdraft = 0))
) STRICT;

CREATE TABLE transfers (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    leg INTEGER NOT NULL DEFAULT 0 CHECK (leg IN (0, 1)),
    kind TEXT NOT NULL CHECK (kind IN ('grant', 'deposit', 'reserve', 'post', 'void', 'refund_expense')),
    phase TEXT NOT NULL CHECK (phase IN ('posted', 'pending', 'void')),
    debit_account INTEGER NOT NULL REFERENCES accounts(id),
    credit_account INTEGER NOT NULL REFERENCES accounts(id),
    amount INTEGER NOT NULL CHECK (amount > 0),
    pending_id TEXT,
    job TEXT NOT NULL DEFAULT '',
    memo TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    UNIQUE (id, leg),
    CHECK (debit_account <> credit_account),
    CHECK ((kind IN ('post', 'void')) = (pending_id IS NOT NULL)),
    CHECK ((kind = 'reserve') = (phase = 'pending')),
    CHECK ((kind = 'void') = (phase = 'void'))
) STRICT;
-- Each reservation is resolved (posted or voided) at most once.
CREATE UNIQUE INDEX transfers_resolution ON transfers(pending_id) WHERE pending_id IS NOT NULL AND leg = 0;
CREATE INDEX transfers_debit ON transfers(debit_account, phase, amount);
CREATE INDEX transfers_credit ON transfers(credit_account, phase, amount);
CREATE TRIGGER transfers_no_update BEFORE UPDATE ON transfers
    BEGIN SELECT RAISE(ABORT, 'transfers are append-only'); END;
CREATE TRIGGER transfers_no_delete BEFORE DELETE ON transfers
    BEGIN SELECT RAISE(ABORT, 'transfers are append-only'); END;

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    chat_id INTEGER NOT NULL,
    user_message_id INTEGER,
    status_message_id INTEGER,
    input_ref TEXT,
    options TEXT NOT NULL DEFAULT '{}',
    reservation TEXT NOT NULL,
    max_price INTEGER NOT NULL CHECK (max_price > 0),
    request_order TEXT,
    order_hash TEXT UNIQUE,
    deal_id TEXT,
    task_id TEXT,
    app_price INTEGER CHECK (app_price >= 0),
    workerpool_price INTEGER CHECK (workerpool_price >= 0),
    result_ref TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    state TEXT NOT NULL CHECK (state IN ('RECEIVED', 'ORDER_SIGNED', 'MATCHING', 'MATCHED', 'RUNNING',
        'COMPLETED', 'DELIVERED', 'REFUNDED', 'CANCELLED', 'NEEDS_ADMIN')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    state_times TEXT NOT NULL DEFAULT '{}'
) STRICT;
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX jobs_user ON jobs(user_id, created_at);
CREATE INDEX jobs_task ON jobs(task_id);

CREATE TABLE chain_txs (
    tx_hash TEXT PRIMARY KEY,
    raw_tx TEXT NOT NULL,
    nonce INTEGER NOT NULL CHECK (nonce >= 0),
    sender TEXT NOT NULL,
    purpose TEXT NOT NULL,
    job_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('persisted', 'broadcast', 'mined', 'failed', 'replaced')),
    block_number INTEGER,
    replaced_by TEXT,
    error TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE INDEX chain_txs_sender ON chain_txs(sender, status, nonce);

CREATE TABLE events (
    kind TEXT NOT NULL,
    natural_id TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT 'null',
    created_at INTEGER NOT NULL,
    PRIMARY KEY (kind, natural_id)
) STRICT;

CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
"""


def _v1_accounts(now_ms: int) -> list[tuple[str, tuple[object, ...]]]:
    return [
        ("INSERT INTO accounts (name, user_id, no_overdraft, created_at) VALUES (?, NULL, 0, ?)", (name, now_ms))
        for name in OPERATOR_ACCOUNTS
    ]


# v2: each resolution (leg 0 of a post or void) carries its reservation's amount (`reserved`) and row
# (`reserve_seq`), written in the same transaction as the transfer; the audit checks both against the
# reservation row with one rowid lookup. Existing resolutions are back-filled (the append-only trigger is
# lifted for that one statement only). `transfers_pair` replaces `transfers_debit`: one ordered pass over it
# gives every account's four totals. The CHECKs allow NULL (rows that resolve nothing, and old rows until the
# back-fill); the audit insists that every resolution has both.
_V2 = """
ALTER TABLE transfers ADD COLUMN reserved INTEGER
    CHECK (reserved IS NULL OR (reserved > 0 AND ((kind = 'void' AND amount = reserved)
                                                  OR (kind = 'post' AND leg = 0 AND amount <= reserved))));
ALTER TABLE transfers ADD COLUMN reserve_seq INTEGER
    CHECK (reserve_seq IS NULL OR (reserve_seq > 0 AND reserve_seq < seq))
    CHECK ((reserve_seq IS NULL) = (reserved IS NULL));
DROP TRIGGER transfers_no_update;
UPDATE transfers AS r SET reserved = res.amount, reserve_seq = res.seq
    FROM transfers AS res
    WHERE r.pending_id IS NOT NULL AND r.leg = 0 AND res.id = r.pending_id AND res.leg = 0
      AND res.kind = 'reserve';
CREATE TRIGGER transfers_no_update BEFORE UPDATE ON transfers
    BEGIN SELECT RAISE(ABORT, 'transfers are append-only'); END;
DROP INDEX transfers_debit;
CREATE INDEX transfers_pair ON transfers(debit_account, credit_account, phase, amount, reserved);
"""


def _nothing(now_ms: int) -> list[tuple[str, tuple[object, ...]]]:
    return []


# v3: every index is one more page written by each commit. `transfers_credit` served only the v1 audit and
# the credit side of a user's history; the v2 audit reads `transfers_pair`, and a user is credited only by
# operator accounts, so history finds those rows through `transfers_pair` (debit IN operators, credit = user).
_V3 = """
DROP INDEX transfers_credit;
"""


# v4: what Telegram delivered, kept before its offset moves on (getUpdates confirms an update at the next
# call, often before its handling ends): a crash in between must not lose the user's message. `body` is the
# update's JSON until its handling finished; then it is blanked (`done_at` set) and the row only says "seen",
# so that a redelivery does nothing twice. Done rows are pruned after a day (Telegram keeps an update 24 h).
_V4 = """
CREATE TABLE inbox (
    update_id INTEGER PRIMARY KEY CHECK (update_id >= 0),
    body TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    done_at INTEGER CHECK (done_at IS NULL OR done_at >= received_at)
) STRICT;
"""


# v5: users fund themselves (issue 15). `wallet_links`: an address proven (by a signature) to belong to a
# Telegram user; one address has one user (PRIMARY KEY), a user may have several. `link_challenges`: the
# one-time nonces the proofs sign; a nonce is used at most once (`used_at`). `deposits`: every RLC transfer to
# the hot wallet that reached finality, keyed by its natural id (tx hash, log index), recorded once; credited
# ones name the transfer that credited them (`transfer_id`, UNIQUE), unclaimed ones (from an unlinked
# address) wait for an admin. Addresses are stored lowercase 0x-hex.
_V5 = """
CREATE TABLE wallet_links (
    address TEXT PRIMARY KEY CHECK (length(address) = 42 AND address = lower(address) AND address LIKE '0x%'),
    user_id INTEGER NOT NULL CHECK (user_id > 0),
    form TEXT NOT NULL CHECK (form IN ('eip712', 'personal_sign', 'admin')),
    nonce TEXT NOT NULL,
    linked_at INTEGER NOT NULL
) STRICT;
CREATE INDEX wallet_links_user ON wallet_links(user_id);

CREATE TABLE link_challenges (
    nonce TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL CHECK (user_id > 0),
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL CHECK (expires_at > issued_at),
    used_at INTEGER
) STRICT;
CREATE INDEX link_challenges_user ON link_challenges(user_id, issued_at);

CREATE TABLE deposits (
    tx_hash TEXT NOT NULL CHECK (length(tx_hash) = 66 AND tx_hash = lower(tx_hash)),
    log_index INTEGER NOT NULL CHECK (log_index >= 0),
    block_number INTEGER NOT NULL CHECK (block_number >= 0),
    block_hash TEXT NOT NULL,
    sender TEXT NOT NULL CHECK (length(sender) = 42 AND sender = lower(sender)),
    amount INTEGER NOT NULL CHECK (amount > 0),
    status TEXT NOT NULL CHECK (status IN ('credited', 'unclaimed')),
    user_id INTEGER CHECK (user_id IS NULL OR user_id > 0),
    transfer_id TEXT UNIQUE,
    assigned_by INTEGER,
    notified_at INTEGER,
    seen_at INTEGER NOT NULL,
    credited_at INTEGER,
    PRIMARY KEY (tx_hash, log_index),
    CHECK ((status = 'credited') = (user_id IS NOT NULL AND transfer_id IS NOT NULL AND credited_at IS NOT NULL))
) STRICT;
CREATE INDEX deposits_status ON deposits(status, notified_at);
CREATE INDEX deposits_user ON deposits(user_id, block_number);
"""


# (version, name, DDL script, function giving parameterised statements to run after the script)
#: rows a migration writes after its SQL: (statement, parameters) for the time of the migration
AfterMigration = Callable[[int], list[tuple[str, tuple[object, ...]]]]

MIGRATIONS: list[tuple[int, str, str, AfterMigration]] = [
    (1, "books, jobs, chain txs, events, kv", _V1, _v1_accounts),
    (2, "reserved amount and row on each resolution; account-pair index for the audit", _V2, _nothing),
    (3, "drop transfers_credit (fewer pages per commit)", _V3, _nothing),
    (4, "inbox of Telegram updates kept until handled", _V4, _nothing),
    (5, "wallet links, link challenges and on-chain deposits to the hot wallet", _V5, _nothing),
]
SCHEMA_VERSION = len(MIGRATIONS)
