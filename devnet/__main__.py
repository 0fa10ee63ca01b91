"""Command line of the devnet.

    python -m devnet up [--data DIR] [--app real|test] [--weights PATH] [--workers N] [--fresh] [--tee]
    python -m devnet status [--data DIR]
    python -m devnet demo [--data DIR] [--app real|test] [--weights PATH] [--fresh] [--standard]
                                                                    (+ the bot, chat page)

`up` starts the whole local network (see devnet/up.py), prints what runs where and the bot's env file, and
on Ctrl-C, SIGTERM or SIGHUP (the terminal closed) stops all of it, saving the chain state, leaving nothing
running. Its bot.env runs standard tasks (TEE_MODE=off); `--tee` writes TEE_MODE=on (TDX deals, as on
the testnet). The demo runs TDX deals unless `--standard`. `--fresh` moves the data folder aside (kept as
<data>.old-<time>) and starts over. `status` reads <data>/devnet.json (without --data: data/demo, then
data/devnet, whichever runs) and exits 0 only when every part answers; otherwise it names what is missing
and exits 1 (2: the devnet is not up). None ever prints a key, a password or the bot token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devnet.up import REPO_DIR, Devnet, DevnetConfig, DevnetError, move_aside

DEFAULT_DATA = REPO_DIR / "data" / "devnet"
DEMO_DATA = REPO_DIR / "data" / "demo"
FRESH_HELP = (
    "start over: move the data folder aside (kept as <data>.old-<time>: books, wallet, chain) "
    "and begin with a new chain, wallet and books"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devnet", description="The local iExec devnet.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start anvil, PoCo, market, gateway, workerpool and Telegram stand-ins")
    up.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"data folder (default {DEFAULT_DATA})")
    up.add_argument(
        "--app",
        choices=("real", "test"),
        default="real",
        help="real: python -m worker (Mask R-CNN); test: the fast devnet test app",
    )
    up.add_argument(
        "--weights",
        type=Path,
        help="Mask R-CNN weights for the real app (default: random ResNet50 test weights, made once)",
    )
    up.add_argument("--workers", type=int, default=2, help="tasks run at once (default 2)")
    up.add_argument("--fresh", action="store_true", help=FRESH_HELP)
    up.add_argument(
        "--tee",
        action="store_true",
        help="bot.env runs the bot's tasks as TDX deals (TEE_MODE=on; default: standard tasks)",
    )
    from devnet.demo import add_arguments as demo_arguments

    demo = sub.add_parser("demo", help="the devnet, the bot on it and a local chat page (README's first command)")
    demo_arguments(demo)
    status = sub.add_parser("status", help="exit 0 when every part of a running devnet answers")
    status.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"data folder (default: {DEMO_DATA} when the demo runs, else {DEFAULT_DATA})",
    )
    return parser


def _print_summary(net: Devnet) -> None:
    info = net.describe()
    rows = [
        ("chain (anvil)", info["anvil"]["rpc_url"]),
        ("hub", info["deployment"]["hub"]),
        ("RLC", info["deployment"]["rlc"]),
        ("market", info["market"]["url"]),
        ("result gateway", f"{info['gateway']['url']} (IPFS uploads at {info['gateway']['upload_url']})"),
        ("SMS", f"{info['sms']['url']} (secrets in {info['sms']['state']})"),
        ("workerpool", f"{info['workerpool']['address']} (control {info['workerpool']['control_url']})"),
        ("app", f"{info['app']['address']} ({info['workerpool']['app']})"),
        ("telegram stand-in", f"{info['telegram']['url']} (bot @{info['telegram']['bot_username']})"),
        ("bot wallet", info["bot"]["address"]),
        (
            "bot settings",
            f"{info['bot']['env_file']} (TEE_MODE="
            + ("on: TDX deals)" if info["bot"]["tee"] else "off: standard deals)"),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print("\ndevnet is up:")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(
        f"\nrun the bot with:  set -a; . {info['bot']['env_file']}; set +a; python -m bot\nCtrl-C stops everything.",
        flush=True,
    )


def _say(line: str) -> None:
    """Print a line; a terminal that is gone (SIGHUP) must not keep the devnet from stopping and saving."""
    with contextlib.suppress(OSError, ValueError):
        print(line, flush=True)


def fresh_start(data: Path) -> None:
    """--fresh: move `data` aside and say where it went. Raises DevnetError when a devnet runs on it."""
    kept = move_aside(data)
    if kept is not None:
        print(f"--fresh: the old data folder is kept as {kept}", flush=True)


async def _up(args: argparse.Namespace) -> int:
    if args.fresh:
        try:
            fresh_start(args.data)
        except DevnetError as exc:
            print(f"devnet: {exc}", file=sys.stderr)
            return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed, SSH hung up
        loop.add_signal_handler(sig, stop.set)
    config = DevnetConfig(
        data_dir=args.data, app=args.app, weights=args.weights, workers=args.workers, graph_cache=True, tee=args.tee
    )
    net = Devnet(config, progress=_say)
    try:
        starting = asyncio.create_task(net.start())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()
            _print_summary(net)
            await stopper
        else:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
    except DevnetError as exc:
        print(f"devnet: {exc}", file=sys.stderr)
        return 1
    finally:
        _say("stopping the devnet ...")
        await net.stop()
        _say("devnet stopped.")
    return 0


def _answers(url: str, check: Any = None, body: bytes | None = None) -> str | None:
    """None when `url` answers 200 (and `check(json)` holds), else why not."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=3) as resp:
            data = json.loads(resp.read() or b"null")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"no answer ({getattr(exc, 'reason', exc)})"
    if check is not None and not check(data):
        return f"unexpected answer {str(data)[:120]}"
    return None


def default_status_dir(folders: tuple[Path, ...] = (DEMO_DATA, DEFAULT_DATA)) -> Path | None:
    """The data folder `status` looks at without --data: the first of `folders` (the demo's, then `up`'s)
    where a devnet runs (has a devnet.json); None when none has."""
    return next((folder for folder in folders if (folder / "devnet.json").exists()), None)


def status(data_dir: Path | None = None, folders: tuple[Path, ...] = (DEMO_DATA, DEFAULT_DATA)) -> int:
    """Check every part of the devnet described in <data>/devnet.json; print a line each; return 0/1/2.
    Without `data_dir`, the first of `folders` where a devnet runs."""
    if data_dir is None:
        data_dir = default_status_dir(folders)
        if data_dir is None:
            looked = " nor ".join(str(f) for f in folders)
            print(f"devnet is not running (no devnet.json in {looked})", file=sys.stderr)
            return 2
        print(f"devnet in {data_dir}")
    try:
        info = json.loads((data_dir / "devnet.json").read_text())
    except (OSError, ValueError):
        print(f"devnet is not running (no {data_dir / 'devnet.json'})", file=sys.stderr)
        return 2
    token = (data_dir / "telegram.token").read_text().strip() if (data_dir / "telegram.token").exists() else ""
    rpc_body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    checks = {
        "anvil": _answers(
            info["anvil"]["rpc_url"], lambda d: int(d["result"], 16) == info["anvil"]["chain_id"], rpc_body
        ),
        "market": _answers(f"{info['market']['url']}/version", lambda d: d.get("ok")),
        "gateway": _answers(f"{info['gateway']['url']}/health", lambda d: d.get("ok")),
        "sms": (
            _answers(f"{info['sms']['url']}/actuator/health", lambda d: d.get("status") == "UP")
            if (info.get("sms") or {}).get("url")
            else "not in devnet.json (a devnet from before the SMS)"
        ),
        "workerpool": _answers(
            f"{info['workerpool']['control_url']}/health",
            lambda d: d.get("workerpool") == info["workerpool"]["address"],
        ),
        "telegram": _answers(f"{info['telegram']['url']}/bot{token}/getMe", lambda d: d.get("ok")),
    }
    for name, problem in checks.items():
        print(f"{name:<11} {'ok' if problem is None else 'MISSING: ' + problem}")
    missing = [name for name, problem in checks.items() if problem is not None]
    if missing:
        print(f"devnet incomplete: {', '.join(missing)} not answering", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m devnet`."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from devnet.demo import run_demo

        return asyncio.run(run_demo(args))
    if args.command == "status":
        return status(args.data)
    return asyncio.run(_up(args))


if __name__ == "__main__":
    sys.exit(main())
