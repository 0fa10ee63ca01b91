"""Every sentence the bot says to a person, in one place (HTML parse mode).

Texts say what happened and what to do next in plain words; they never contain a secret, a raw exception
or an internal id other than the job's short id.
"""

from __future__ import annotations

import datetime as _dt
import html
import re
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal

from ledger import Job, JobState, RefundReason

NRLC = 10**9

_IRREGULAR = {
    "person": "persons",
    "mouse": "mice",
    "knife": "knives",
    "sheep": "sheep",
    "skis": "skis",
    "scissors": "scissors",
    "broccoli": "broccoli",
}


def rlc(nrlc: int) -> str:
    """`1500000000` -> `1.5 RLC`: exact, no float."""
    text = format(Decimal(nrlc) / NRLC, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} RLC"


def plural(word: str, n: int) -> str:
    if n == 1:
        return word
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    head, _, last = word.rpartition(" ")
    if last in _IRREGULAR:
        return f"{head} {_IRREGULAR[last]}".strip()
    if word.endswith(("s", "sh", "ch", "x")):
        return word + "es"
    return word + "s"


def caption(class_names: Iterable[str], limit: int = 8) -> str:
    """`["person", "dog", "person"]` -> `2 persons, 1 dog` (most frequent first)."""
    counts = Counter(class_names)
    if not counts:
        return "Nothing recognised in this picture."
    parts = [f"{n} {plural(name, n)}" for name, n in counts.most_common(limit)]
    rest = len(counts) - limit
    if rest > 0:
        parts.append(f"{rest} more kinds")
    return ", ".join(parts)


def result_caption(class_names: Iterable[str], *, random_weights: bool, task: int, fee: int) -> str:
    """The caption under a result (plain text): what was found (said to be meaningless with random
    weights), then the one statement of what was charged."""
    found = caption(class_names)
    if random_weights:
        found = RESULT_RANDOM.format(found=found[0].lower() + found[1:].rstrip("."))
    return f"{found}\n\n" + CHARGED.format(charged=rlc(task + fee), task=rlc(task), fee=rlc(fee))


def plain(text: str) -> str:
    """A text of this module without its HTML (tags removed, entities turned back into characters), for
    sending without a parse mode when Telegram could not read it as HTML."""
    return html.unescape(re.sub(r"</?[a-z][a-z0-9-]*(?:\s[^<>]*)?>", "", text))


def ordinal(n: int) -> str:
    """`1` -> `1st`, `2` -> `2nd`, `11` -> `11th`, `23` -> `23rd`."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def elapsed(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


START = (
    "<b>Hello!</b> Send me a photo, an image file or an image link and I will find the objects in it "
    "(people, animals, vehicles and 77 more kinds) with Mask R-CNN, computed on iExec, the decentralized "
    "compute market. You get the picture back with coloured masks, boxes and labels.\n\n"
    "<b>Price:</b> at most {price} per picture. I reserve {price}, then charge the price the iExec task was "
    "bought at plus my fee of {fee}; the rest comes back at once.\n<b>Your balance:</b> {available}.\n\n"
    "{demo}"
    "<b>Privacy:</b> {privacy} "
    "/forget deletes the pictures and results I keep; the books keep amounts only.\n\n/help lists the commands."
)
#: /start's privacy paragraph for standard tasks (TEE_MODE off)
PRIVACY_STANDARD = (
    "your picture is served to the worker at a secret link that expires when the task ends, "
    "but that link is written in the task's public parameters on the blockchain while it works, and the "
    "result is stored on public IPFS by the workerpool. Do not send pictures you need to keep private."
)
#: /start's privacy paragraph in TEE (TDX) mode: what is true then, and what is not
PRIVACY_TEE = (
    "your picture is encrypted before it leaves me; its key goes to iExec's secret service, which gives it "
    "only to an attested enclave (Intel TDX) running the segmentation app for this task. The result is "
    "encrypted to my key before it is stored on IPFS, so the workers' operators, the blockchain and IPFS "
    "see only encrypted bytes. I (this bot and its operator) still see your picture and the result."
)


PRIVACY_SIMULATED = " (On this test network the enclave and the secret service are simulated.)"


def privacy(tee: bool, *, simulated: bool = False) -> str:
    """The privacy paragraph of /start for the bot's mode (`simulated`: the devnet, whose TDX is a stand-in)."""
    if not tee:
        return PRIVACY_STANDARD
    return PRIVACY_TEE + (PRIVACY_SIMULATED if simulated else "")


HELP = (
    "<b>Commands</b>\n"
    "/balance — your credit: available and reserved\n"
    "/status — jobs in progress\n"
    "/jobs — your recent jobs and how they ended\n"
    "/cancel — cancel a job that has not started on iExec yet (full refund)\n"
    "/forget — delete the pictures and results I keep for you\n\n"
    "Send a photo, an image file (JPEG, PNG, WEBP, GIF, BMP; the first frame of an animation) "
    "or an http(s) link to one."
)

ADMIN_HELP = (
    "\n\n<b>Admin</b>\n/fund USER RLC [memo] · /wallet · /deposit RLC · /withdraw RLC · /users · /job ID · "
    "/refund ID · /retry ID · /reconcile · /pause · /resume · /price"
)

BALANCE = "<b>Available:</b> {available}\n<b>Reserved</b> for jobs in progress: {pending}"
NO_CREDIT = (
    "You have {available} available and a picture costs up to {price}. Ask the operator for credit, then "
    "send the picture again. Nothing was charged."
)
PAUSED = "The bot is not taking new pictures right now (maintenance). Nothing was charged; try again later."
LIMIT_IN_FLIGHT = "You already have {n} pictures in progress; wait for one to finish. Nothing was charged."
LIMIT_QUEUE = (
    "You already have {running} pictures in progress and {waiting} waiting in line; at most {cap} can wait. "
    "Send this one again when one of them is done. Nothing was charged."
)
QUEUED = (
    "🕒 Queued: {position} in line, {reserved} reserved. It starts as soon as one of your pictures in "
    "progress is done.\njob <code>{short}</code> · /status · /cancel takes it out (full refund)"
)
LIMIT_HOURLY = "You sent {n} pictures in the last hour, the most allowed. Try again later. Nothing was charged."
LIMIT_DAILY = "This picture would take you over today's spending limit of {limit}. Nothing was charged."
UNSUPPORTED = (
    "I can only work on pictures: send a photo, an image file or an http(s) link to an image. "
    "({what} is not something I can segment.) Nothing was charged."
)
REJECTED = "{reason} Nothing was charged."

ACK = "📥 Got it. Checking your picture…"
STAGES = {
    "RECEIVED": "📥 Picture received, {reserved} reserved.",
    "ORDER_SIGNED": "🔏 Order signed, looking for a worker on iExec…",
    "MATCHING": "🤝 Buying the task on iExec…",
    "MATCHED": "⏳ Task bought (deal {deal}). Waiting for the worker to start…",
    "RUNNING": "⚙️ The worker is segmenting your picture…",
    "COMPLETED": "📦 Result received, sending it…",
    "DELIVERED": "✅ Done in {elapsed}. The result is below.",
    "REFUNDED": "↩️ Refunded in full: {reason}",
    "CANCELLED": "🚫 Cancelled; your reservation was returned.",
    "NEEDS_ADMIN": "⚠️ Something unusual happened; an operator will look at it. {money}",
}
HELD_RESERVED = "Your money is safe (reserved, not spent)."
HELD_CHARGED = "The task was done and charged; the operator will get the result to you or refund it."
HELD = "⚠️ Your job <code>{short}</code> is held for an operator, who has been told. {money}"
REFUND_NOTICE = "↩️ Job <code>{short}</code> was refunded in full: {reason} Nothing was charged."
PICTURE_NOT_SENT = "⚠️ The picture could not be sent: Telegram refused it ({why}). Ask the operator for job {short}."
WORKING = "⏱ {elapsed} so far · job <code>{short}</code> · /status"
DOWNLOAD_FAILED = "I could not download that file from Telegram (it may be over Telegram's 20 MB limit)."
DETECTIONS_GONE = "The detections of that job are no longer stored (deleted with /forget)."
STATUS_LINE = "Job <code>{short}</code> · {stage} · {elapsed}"
NOT_STARTED = (
    "Your task has not started yet after {waited}. iExec gives it until {deadline} (UTC); if no worker runs "
    "it by then, you are refunded automatically."
)
NO_JOBS = "No jobs yet. Send a picture to start."
NO_ACTIVE = "Nothing in progress."
CANCEL_NONE = "There is nothing I can cancel: jobs already bought on iExec run to the end (or get refunded)."
CANCELLED = "Cancelled job <code>{short}</code>; {amount} returned to your balance."
FORGET_ASK = (
    "Delete the pictures and results I keep for you ({n} stored)? This cannot be undone; the detections "
    "button of old results stops working. Your balance and job amounts stay in the books."
)
FORGET_NOTHING = "I keep no pictures or results of yours; nothing to delete."
FORGET_KEPT = "Nothing deleted."
FORGET_DONE = "Deleted {n} stored pictures and results. Your balance and job amounts stay in the books."
ALREADY_DONE = "Already done (this confirmation was used before); nothing was done twice."
STAKE_FAILED_BEFORE = "This {kind} failed when it was confirmed, and nothing moved. Send /{kind} again to try again."
UNKNOWN_COMMAND = "I don't know that command. /help lists what I can do."
SEGMENT_HOW = (
    "Reply <code>/segment</code> to a photo (or an image file) and I will segment it, paid with your credit. "
    "In a private chat you can also just send me the picture."
)
SEGMENT_ALREADY = "That picture was already asked for (job <code>{short}</code>); its result answers it."
ADMIN_PRIVATE_ONLY = "Admin commands work only in a private chat with me: use this there."
PERSONAL_PRIVATE_ONLY = (
    "That shows your own credit and wallets, so I answer it only in a private chat: write to @{bot}."
)
HELP_GROUPS = (
    "\n\n<b>In a group</b> I answer only when asked: reply <code>/segment</code> to a picture, or mention me "
    "in a picture's caption. The one who asks pays, with their own credit. Of an album sent in a group I see "
    "only the photo carrying the caption: send albums in a private chat."
)
ERROR = "Sorry, something went wrong on my side. Nothing was charged twice; try again in a minute."
INTAKE_BUSY = (
    "⏳ I am very busy and could not take your picture in yet. It is kept and will be taken in when I can; "
    "nothing was charged so far."
)

REFUND_REASONS: dict[RefundReason, str] = {
    RefundReason.NO_OFFER: "no iExec worker was available at a price within the limit.",
    RefundReason.EXPIRED: "the task did not finish before its deadline on iExec.",
    RefundReason.FAILED: "the task failed on iExec.",
    RefundReason.APP_ERROR: "the segmentation app could not process the picture ({detail}).",
    RefundReason.BAD_RESULT: "the result could not be read ({detail}).",
    RefundReason.ADMIN: "an operator refunded it.",
    RefundReason.NO_STAKE: "the bot's iExec account is short of funds; the operator has been told.",
}

RANDOM_WEIGHTS = "⚠️ <b>Random weights: these shapes mean nothing.</b>"
DEMO_RANDOM = (
    "⚠️ <b>Demo with random weights:</b> the masks and labels are random shapes that mean nothing; they "
    "show how the service works, not what is in your picture.\n\n"
)
RESULT_RANDOM = (  # a caption: plain text (captions are sent without a parse mode)
    "⚠️ Random weights: these shapes mean nothing. This demo runs Mask R-CNN without its trained weights, "
    "so the labels below are random too: {found}."
)
CHARGED = "Charged {charged} (task {task} + fee {fee})."

HINT = "Send me a photo, an image file or an http(s) link to an image, and I will segment it. /help for more."
STAGE_QUEUED = "queued, {position} in line"
STAGE_NAMES = {
    "RECEIVED": "received",
    "ORDER_SIGNED": "looking for a worker",
    "MATCHING": "buying the task",
    "MATCHED": "waiting for the worker",
    "RUNNING": "segmenting",
    "COMPLETED": "sending the result",
    "DELIVERED": "delivered",
    "REFUNDED": "refunded",
    "CANCELLED": "cancelled",
    "NEEDS_ADMIN": "held for an operator",
}


def job_line(job: Job) -> str:
    """One line of /jobs: short id, date, outcome and what it cost."""
    when = _dt.datetime.fromtimestamp(job.created_at / 1000, _dt.UTC).strftime("%m-%d %H:%M")
    state = job.state.value
    line = f"<code>{job.id[-8:]}</code> {when} · {STAGE_NAMES.get(state, state)}"
    album = (job.options or {}).get("album")
    if job.state is JobState.DELIVERED and job.app_price is not None and job.workerpool_price is not None:
        line += f" · {rlc(job.app_price + job.workerpool_price)} + " + ("fees" if album else "fee")
    if album:
        line += f" · album of {len(album['inputs'])}"
    return line


# Users fund themselves (/link, bot.funding)
FUNDING_HELP = (
    "\n\n<b>Fund yourself</b>\n/link — link your wallet once; RLC you then send from it becomes your credit\n"
    "/unlink 0xADDRESS — stop crediting transfers from that address"
)
ADMIN_FUNDING_HELP = " · /unclaimed [ID USER]"
FUNDING_OFF = "Funding yourself is not available on this bot; ask the operator for credit."
LINK_NEEDS_SIGNATURE = (
    "Send /link alone to get the message to sign, then /link 0xADDRESS 0xSIGNATURE (or just the signature)."
)
UNLINKED = "Unlinked {address}: transfers from it are no longer credited to you (earlier credit stays)."
UNLINK_NONE = "{address} is not linked to you: /balance lists your linked addresses."
LINK_CHECK_ADDRESS = (
    "\nCheck that this is your wallet's address: a signature over another message (another chain or bot) "
    "names another one. If it is not yours, /unlink it and sign the message of a new /link."
)

# Albums (several photos sent together: one task, bot.albums)
ALBUM_ACK = (
    "📥 Got your album of {n} photos: one iExec task for all of them. Price: at most {price} "
    "(one task, at most {task}, plus {per_photo} per photo). A photo that fails is paid back its share. "
    "Checking your pictures…"
)
ALBUM_TOO_LARGE = (
    "An album holds at most {max} photos; this one has {n}. Send them in smaller albums. Nothing was charged."
)
#: in a group, only the album's photo whose caption mentions the bot reached it (privacy mode hides the others)
ALBUM_GROUP_ONE_SEEN = (
    "In a group I see only the photo that carries the caption mentioning me, so I segment this one only. "
    "For all the photos of an album, send the album to me in a private chat, or reply <code>/segment</code> "
    "to each photo."
)
#: a photo of an album refused at intake (the others go on)
ALBUM_PHOTO_REJECTED = "Photo {index} of your album was left out: {reason}"
#: the caption of an album's result (plain text, on its first picture)
ALBUM_CAPTION = "{n} of {total} pictures segmented in one iExec task."
ALBUM_RANDOM = (
    "⚠️ Random weights: these shapes mean nothing. This demo runs Mask R-CNN without its trained weights, "
    "so the labels below are random too."
)
ALBUM_DETECTIONS = "What was found in each picture (classes, scores, boxes), as one file:"
ALBUM_CAPTION_FAILED = "Picture {index} failed: {error} Paid back: {refund}."
ALBUM_CHARGED = "Charged {charged} (task {task} + fee {fee} + {n} × {per_photo} per photo){refunds}."
ALBUM_REFUNDS = ", {refund} paid back"


def album_caption(
    found: list[tuple[int, list[str]]],
    failed: list[tuple[int, str, int]],
    *,
    total: int,
    random_weights: bool,
    task: int,
    fee: int,
    per_photo: int,
) -> str:
    """The one summary under an album's result (plain text): what each delivered picture shows (`found`: its
    index in the album and its class names, in order), why each failed one failed and what it got back (`failed`: index,
    error, nRLC), and the one statement of what was charged."""
    head = [ALBUM_CAPTION.format(n=len(found), total=total)]
    if random_weights and found:  # said once for the album, not once per picture
        head.append(ALBUM_RANDOM)
    body = [f"{number}. {caption(names)}" for number, names in found]
    body += [ALBUM_CAPTION_FAILED.format(index=i, error=e.rstrip(".") + ".", refund=rlc(r)) for i, e, r in failed]
    paid_back = sum(r for _, _, r in failed)
    charged = ALBUM_CHARGED.format(
        charged=rlc(task + fee + total * per_photo),
        task=rlc(task),
        fee=rlc(fee),
        n=total,
        per_photo=rlc(per_photo),
        refunds=ALBUM_REFUNDS.format(refund=rlc(paid_back)) if paid_back else "",
    )
    # A caption holds 1024 characters: the pictures' lines are cut, never the head or what was charged.
    room = 1000 - len("\n".join([*head, charged])) - 1
    middle = "\n".join(body)
    if len(middle) > room:
        middle = middle[: max(room - 1, 0)].rstrip() + "…"
    return "\n".join([*head, middle, charged] if middle else [*head, charged])
