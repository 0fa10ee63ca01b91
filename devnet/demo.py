"""`python -m devnet demo`: the whole product on this machine — the devnet, the bot, and a chat page.

Starts the devnet (anvil with the real PoCo contracts, market, result gateway, a workerpool running our Mask
R-CNN worker, the Telegram stand-in), credits the demo user in the bot's books (`python -m ledger grant`, an
admin's job done once for the demo), then runs the bot (`python -m bot`) as a child process on the devnet's
settings. Open the printed chat page, send a photo or an image URL, and watch the bot answer as in Telegram.

With TELEGRAM_TOKEN set in the environment the bot talks to the real Telegram instead (compute still runs on
the devnet); ADMIN_IDS then names the admins, who get the demo credit too.

Without matterport's COCO weights (`python -m worker fetch-weights`, or MRCNN_WEIGHTS=path) the worker runs
with random weights: the masks are then meaningless shapes, and the picture says so.

Ctrl-C stops the bot, then the devnet; nothing is left running. The devnet never imports `bot` or `ledger`:
both run as processes.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from devnet.up import REPO_DIR, Devnet, DevnetConfig

DEMO_USER = 1001
DEMO_ADMIN = 1001
DEMO_CREDIT_RLC = "5"


def _say(line: str) -> None:
    print(line, flush=True)


def _bot_env_file(net: Devnet, data: Path, admins: str, real_token: str | None) -> Path:
    env = dict(net.env)
    env["ADMIN_IDS"] = admins
    env["LOG_LEVEL"] = os.environ.get("LOG_LEVEL", "INFO")
    env["MATCH_TIMEOUT_S"] = "120"
    env["WORKER_ARGS"] = os.environ.get("WORKER_ARGS", "--max-dim 1024 --min-confidence 0.5")
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
    proc = subprocess.run([sys.executable, "-m", "ledger", "--db", db, "grant", str(user), rlc,
                           "--memo", "demo credit", "--id", f"demo-credit-{user}"],
                          cwd=REPO_DIR, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise SystemExit(f"could not credit the demo user: {proc.stderr.strip()}")


async def run_demo(args: argparse.Namespace) -> int:
    data = Path(args.data).resolve()
    weights = Path(args.weights).resolve() if args.weights else None
    config = DevnetConfig(data_dir=data, app=args.app, weights=weights, workers=args.workers, graph_cache=True)
    real_token = os.environ.get("TELEGRAM_TOKEN") or None
    admins = os.environ.get("ADMIN_IDS", "") if real_token else str(DEMO_ADMIN)
    _say("starting the devnet (the first run deploys PoCo and makes test weights: about a minute)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Devnet(config, progress=_say) as net:
        env_file = _bot_env_file(net, data, admins, real_token)
        users = [int(a) for a in admins.replace(",", " ").split()] if real_token else [DEMO_USER]
        for user in users:
            await asyncio.to_thread(_grant, net.env["DB_PATH"], user, DEMO_CREDIT_RLC)
        bot = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "--env-file", str(env_file),
                                                   cwd=str(REPO_DIR))
        chat = f"{net.telegram_url}/_chat/"
        _say("")
        _say(f"  chat page   {chat}   (you are user {DEMO_USER}, credited {DEMO_CREDIT_RLC} RLC; also admin)"
             if not real_token else "  the bot is on Telegram: write to it there")
        _say(f"  chain       {net.env['RPC_URL']}  (hub {net.env['HUB_ADDRESS']})")
        _say(f"  market      {net.env['MARKET_URL']}   gateway {net.env['IPFS_GATEWAY']}")
        _say(f"  app         {args.app} worker; "
             + ("matterport weights" if weights else "RANDOM weights: masks are meaningless shapes "
                "(python -m worker fetch-weights for the real ones)"))
        _say(f"  books       {net.env['DB_PATH']}   (python -m ledger --db ... balance {DEMO_USER})")
        _say("  Ctrl-C stops everything.")
        waiter = asyncio.create_task(bot.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if bot.returncode is None:
            bot.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(bot.wait(), 15)
            except asyncio.TimeoutError:
                bot.kill()
                await bot.wait()
        stopper.cancel()
        code = bot.returncode or 0
        _say("stopping the devnet")
    return 0 if stop.is_set() else code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=str(REPO_DIR / "data" / "demo"), help="data folder (books, chain)")
    parser.add_argument("--app", default="real", choices=("real", "test"),
                        help="real: the Mask R-CNN worker (default); test: a tiny app without TensorFlow")
    parser.add_argument("--weights", default=os.environ.get("MRCNN_WEIGHTS"),
                        help="matterport's mask_rcnn_coco.h5 (default: random test weights)")
    parser.add_argument("--workers", type=int, default=1, help="tasks run at once by the workerpool")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devnet demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return asyncio.run(run_demo(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
