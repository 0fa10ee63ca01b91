"""`python -m bot` runs the bot; `python -m bot doctor` checks a configuration and says what is missing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=("run", "doctor"),
        help="run the bot (default) or check the configuration",
    )
    parser.add_argument("--env-file", default=None, help="settings file (default .env, when there is one)")
    args = parser.parse_args(argv)
    if args.env_file is not None and not Path(args.env_file).is_file():
        print(f"configuration error: the settings file {args.env_file} does not exist", file=sys.stderr)
        return 2
    env_file = args.env_file or ".env"
    from pydantic import ValidationError

    from bot.settings import Settings

    try:
        settings = Settings(_env_file=env_file)  # type: ignore[call-arg]  # a pydantic-settings option
    except (ValidationError, ValueError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "doctor":
        from bot.doctor import run_doctor

        return run_doctor(settings, env_file=env_file)
    from bot.app import run
    from bot.errors import AlreadyRunning, BooksDoNotMatchChain

    try:
        run(settings)
    except AlreadyRunning as exc:
        print(str(exc), file=sys.stderr)
        return 3
    except BooksDoNotMatchChain as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
