"""`python -m devnet demo`: the whole product on this machine — the devnet, the bot, and a chat page.

Starts the devnet (anvil with the real PoCo contracts, market, result gateway, SMS stand-in, a
workerpool running our Mask R-CNN worker, the Telegram stand-in), credits the demo user in the bot's books
(`python -m ledger grant`, an admin's job done once for the demo), then runs the bot (`python -m bot`) as a
child process on the devnet's settings. Open the printed chat page, send a photo or an image URL, and watch
the bot answer as in Telegram.

Tasks run as TDX deals, as on iExec's testnet (TEE_MODE=on in the bot's settings): the bot publishes the
photo encrypted, gives its key to the SMS stand-in, and the workerpool runs the task as a simulated enclave
would (the key from the SMS, the result encrypted to the bot's key). `--standard` runs standard deals
instead (TEE_MODE=off: the photo in the clear at a secret link, the result plain).

With TELEGRAM_TOKEN set in the environment the bot talks to the real Telegram instead (compute still runs on
the devnet); ADMIN_IDS then names the admins, who get the demo credit too.

Without matterport's COCO weights (`python -m worker fetch-weights`, or MRCNN_WEIGHTS=path) the worker runs
with random weights: the masks are then meaningless shapes, and the picture says so.

Ctrl-C (or SIGTERM, or SIGHUP: the terminal closed, an SSH hangup) stops the bot, then the devnet, saves
the chain state beside the books in the data folder (data/demo) and leaves nothing running; the next start
goes on from there. During the start-up (about a minute the first time) the first Ctrl-C says it will stop
once started; a second one aborts the start-up (what has started is still stopped and saved). The bot and
every other child runs in its own session, so the terminal's Ctrl-C reaches only this process, which stops
them in order; the bot gets SIGTERM, anvil and the worker apps SIGKILL, from the kernel if this process is
killed outright, and the NOT-SAVED marker then makes the next start refuse with the --fresh advice.
When the chain could not be saved, or books exist without a chain, the next start refuses and names
`--fresh`, which keeps the old folder as data/demo.old-<time> and starts over. Each finished task is
printed with the worker's graph_cache (hit once the inference graph exported at start is there; in TDX
mode the result is encrypted to the bot's key, so the line says only that it was).

The devnet never imports `bot` or `ledger`: both run as processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from devnet.anvil import child_preexec
from devnet.up import NOT_SAVED, REPO_DIR, WORKER_ARGS, Devnet, DevnetConfig, DevnetError, move_aside

DEMO_USER = 1001
DEMO_ADMIN = 1001
DEMO_CREDIT_RLC = "5"


def _say(line: str) -> None:
    """Print a line; a terminal that is gone (SIGHUP: closed window, SSH hangup) must not stop the stop."""
    with contextlib.suppress(OSError, ValueError):
        print(line, flush=True)


def _bot_env_file(net: Devnet, data: Path, admins: str, real_token: str | None) -> Path:
    env = dict(net.env)
    env["ADMIN_IDS"] = admins
    env["LOG_LEVEL"] = os.environ.get("LOG_LEVEL", "INFO")
    env["MATCH_TIMEOUT_S"] = "120"
    env["WORKER_ARGS"] = net.config.worker_args  # the exported graph's arguments: tasks find the graph
    if real_token:
        env["TELEGRAM_TOKEN"] = real_token
        env["TELEGRAM_BASE_URL"] = "https://api.telegram.org/bot"
        env["TELEGRAM_BASE_FILE_URL"] = "https://api.telegram.org/file/bot"
    path = data / "demo-bot.env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{k}={v}\n" for k, v in env.items())
    return path


def _grant(db: str, user: int, rlc: str) -> None:
    """The demo credit, once per books (idempotent on its id: a restart credits nothing more)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger",
            "--db",
            db,
            "grant",
            str(user),
            rlc,
            "--memo",
            "demo credit",
            "--id",
            f"demo-credit-{user}",
        ],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"could not credit the demo user: {proc.stderr.strip()}")


def _available(db: str, user: int) -> str:
    """The user's available credit as the ledger CLI says it ("4.68 RLC"), or "?" if it cannot say."""
    proc = subprocess.run(
        [sys.executable, "-m", "ledger", "--db", db, "balance", str(user)],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    found = re.search(r"available ([0-9.]+ RLC)", proc.stdout)
    return found.group(1) if proc.returncode == 0 and found else "?"


def _task_line(net: Devnet, outcome: Any) -> str:
    """One line about a finished task: state, the app's seconds, and what the worker said of its model."""
    line = f"  task {outcome.task_id[:10]}… {outcome.state}, app {outcome.app_seconds:.1f} s"
    if getattr(outcome, "tee", False):
        line += ", TDX deal" + (", result encrypted to the bot's key" if getattr(outcome, "encrypted", False) else "")
    archive = net.gateway.get(outcome.cid) if net.gateway is not None and outcome.cid else None
    if archive:
        try:
            with zipfile.ZipFile(io.BytesIO(archive)) as zf:
                name = next(n for n in zf.namelist() if n.endswith("detections.json"))
                doc = json.loads(zf.read(name))
            model = doc.get("model", {})
            line += f", {doc.get('count', 0)} objects, graph_cache: {model.get('graph_cache', '?')}"
        except (StopIteration, ValueError, KeyError, zipfile.BadZipFile, AttributeError):
            pass  # the test app writes no detections.json
    return line


async def _report_tasks(net: Devnet) -> None:
    """Print each task the workerpool finishes (a display loop: looks twice a second)."""
    shown: set[str] = set(net.pool.outcomes) if net.pool is not None else set()
    while net.pool is not None:
        for tid, outcome in list(net.pool.outcomes.items()):
            if tid not in shown:
                shown.add(tid)
                _say(await asyncio.to_thread(_task_line, net, outcome))
        await asyncio.sleep(0.5)


async def _stop_bot(bot: asyncio.subprocess.Process) -> None:
    """SIGTERM the bot and wait for its clean shutdown (SIGKILL after 15 s)."""
    if bot.returncode is None:
        bot.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(bot.wait(), 15)
        except TimeoutError:
            _say("the bot did not stop within 15 s: killed")
            bot.kill()
            await bot.wait()


async def run_demo(args: argparse.Namespace) -> int:
    data = Path(args.data).resolve()
    if getattr(args, "fresh", False):
        try:
            kept = move_aside(data)
        except DevnetError as exc:
            print(f"devnet: {exc}", file=sys.stderr)
            return 1
        if kept is not None:
            _say(f"--fresh: the old data folder is kept as {kept}")
    try:
        return await _run_demo(args, data)
    except DevnetError as exc:
        print(f"devnet: {exc}", file=sys.stderr)
        return 1


async def _run_demo(args: argparse.Namespace, data: Path) -> int:
    weights = Path(args.weights).resolve() if args.weights else None
    config = DevnetConfig(
        data_dir=data,
        app=args.app,
        weights=weights,
        workers=args.workers,
        graph_cache=True,
        worker_args=os.environ.get("WORKER_ARGS") or WORKER_ARGS,
        tee=not getattr(args, "standard", False),
    )
    real_token = os.environ.get("TELEGRAM_TOKEN") or None
    admins = os.environ.get("ADMIN_IDS", "") if real_token else str(DEMO_ADMIN)
    _say("starting the devnet (the first run deploys PoCo and makes test weights: about a minute)")
    stop, started = asyncio.Event(), asyncio.Event()
    main, aborted = asyncio.current_task(), False

    def on_signal() -> None:
        # Ctrl-C, SIGTERM and SIGHUP (terminal closed, SSH hangup) all stop in order and save the chain.
        # During start-up the first one lets it finish, then stops; a second one aborts it at once.
        nonlocal aborted
        if not stop.is_set():
            stop.set()
            if not started.is_set():
                _say("stopping after start-up… (Ctrl-C again to abort it at once)")
        elif not started.is_set() and not aborted and main is not None:
            aborted = True
            _say("aborting the start-up: stopping what has started")
            main.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await _run_started(args, data, config, admins, real_token, stop, started)
    except asyncio.CancelledError:
        if not aborted or main is None:
            raise
        main.uncancel()
        _say("start-up aborted; everything it started is stopped")
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _run_started(
    args: argparse.Namespace,
    data: Path,
    config: DevnetConfig,
    admins: str,
    real_token: str | None,
    stop: asyncio.Event,
    started: asyncio.Event,
) -> int:
    weights = config.weights
    async with Devnet(config, progress=_say) as net:
        env_file = _bot_env_file(net, data, admins, real_token)
        users = [int(a) for a in admins.replace(",", " ").split()] if real_token else [DEMO_USER]
        for user in users:
            await asyncio.to_thread(_grant, net.env["DB_PATH"], user, DEMO_CREDIT_RLC)
        started.set()  # from here a signal stops the bot (when started), then the devnet, in order
        code = 0 if stop.is_set() else await _run_bot(args, net, data, env_file, weights, real_token, stop)
        _say("stopping the devnet")
    if not (data / NOT_SAVED).exists():
        _say(f"stopped; the chain is saved in {data} (the next start goes on from it)")
    return code


async def _run_bot(
    args: argparse.Namespace,
    net: Devnet,
    data: Path,
    env_file: Path,
    weights: Path | None,
    real_token: str | None,
    stop: asyncio.Event,
) -> int:
    """Run the bot on the started devnet until a signal (0) or until it stops by itself (its exit code)."""
    # own session (Ctrl-C reaches only us: we stop the bot first); SIGTERM from the kernel if we die
    bot = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "--env-file",
        str(env_file),
        cwd=str(REPO_DIR),
        start_new_session=True,
        preexec_fn=child_preexec(signal.SIGTERM),
    )
    chat = f"{net.telegram_url}/_chat/"
    _say("")
    available = await asyncio.to_thread(_available, net.env["DB_PATH"], DEMO_USER)
    _say(
        f"  chat page   {chat}   (you are user {DEMO_USER}, also admin: {available} available; the demo "
        f"credits {DEMO_CREDIT_RLC} RLC once)"
        if not real_token
        else "  the bot is on Telegram: write to it there"
    )
    _say(f"  chain       {net.env['RPC_URL']}  (hub {net.env['HUB_ADDRESS']})")
    _say(f"  market      {net.env['MARKET_URL']}   gateway {net.env['IPFS_GATEWAY']}")
    _say(f"  SMS         {net.env['SMS_URL']}   (secrets in {data / 'sms.json'})")
    _say(
        "  mode        "
        + (
            "tasks run as TDX deals (simulated enclave; --standard for standard tasks)"
            if net.config.tee
            else "tasks run as standard deals (--standard; the default is TDX)"
        )
    )
    _say(
        f"  app         {args.app} worker; "
        + (
            "matterport weights"
            if weights
            else "RANDOM weights: masks are meaningless shapes (python -m worker fetch-weights for the real ones)"
        )
    )
    _say(f"  books       {net.env['DB_PATH']}   (python -m ledger --db ... balance {DEMO_USER})")
    _say(f"  data        {data}   (Ctrl-C saves the chain here; --fresh starts over)")
    _say("  Ctrl-C stops everything.")
    reporter = asyncio.create_task(_report_tasks(net))
    waiter = asyncio.create_task(bot.wait())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _stop_bot(bot)  # the bot first: it sends transactions; the chain is saved after it
        for task in (reporter, stopper, waiter):
            task.cancel()
        await asyncio.gather(reporter, stopper, waiter, return_exceptions=True)
    code = bot.returncode or 0
    if not stop.is_set():
        print(
            f"devnet: the bot stopped by itself (exit code {code}); see its last lines above",
            file=sys.stderr,
            flush=True,
        )
    return 0 if stop.is_set() else (code or 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=str(REPO_DIR / "data" / "demo"), help="data folder (books, chain)")
    parser.add_argument(
        "--app",
        default="real",
        choices=("real", "test"),
        help="real: the Mask R-CNN worker (default); test: a tiny app without TensorFlow",
    )
    parser.add_argument(
        "--weights",
        default=os.environ.get("MRCNN_WEIGHTS"),
        help="matterport's mask_rcnn_coco.h5 (default: random test weights)",
    )
    parser.add_argument("--workers", type=int, default=1, help="tasks run at once by the workerpool")
    parser.add_argument(
        "--standard",
        action="store_true",
        help="run the bot's tasks as standard deals (TEE_MODE=off) instead of TDX deals",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start over: move the data folder aside (kept as <data>.old-<time>: books, "
        "wallet, chain) and begin with a new chain, wallet and books",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devnet demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return asyncio.run(run_demo(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
