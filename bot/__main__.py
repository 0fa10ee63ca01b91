"""`python -m bot` runs the bot; `python -m bot doctor` checks a configuration and says what is missing."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    parser.add_argument("command", nargs="?", default="run", choices=("run", "doctor"),
                        help="run the bot (default) or check the configuration")
    parser.add_argument("--env-file", default=".env", help="settings file (default .env)")
    args = parser.parse_args(argv)
    from pydantic import ValidationError

    from bot.settings import Settings

    try:
        settings = Settings(_env_file=args.env_file)  # type: ignore[call-arg]
    except (ValidationError, ValueError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "doctor":
        from bot.doctor import run_doctor

        return run_doctor(settings)
    from bot.app import run
    from bot.lock import AlreadyRunning

    try:
        run(settings)
    except AlreadyRunning as exc:
        print(str(exc), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
