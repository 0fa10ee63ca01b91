"""`python -m ledger`: the operator's command line for the books and the wallet (see ledger.cli)."""

from __future__ import annotations

import sys

from ledger.cli import main

sys.exit(main())
