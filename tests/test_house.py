"""House rules read from the sources: every silenced check says which check and why, on its own line.

A `# noqa` or `# type: ignore` is a promise that a rule does not apply here; without the rule's code it hides
every rule, and without a reason the next reader cannot tell whether the promise still holds. The house forms:

    except Exception as exc:  # noqa: BLE001 - the chain may be down for a while
    settings = Settings(_env_file=None)  # type: ignore[call-arg]  # a pydantic-settings option

Comments are read with `tokenize`, so the words in a string (like the two lines above) do not count.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = ("bot", "ledger", "iexec", "devnet", "worker", "bench", "tests")
SKIP_DIRS = {"node_modules", "__pycache__", ".venv"}

#: A silencing comment: ruff's `noqa` or mypy's `type: ignore`, wherever it sits in the comment.
SILENCER = re.compile(r"#\s*(noqa|type:\s*ignore)\b", re.IGNORECASE)
#: the noqa form, `noqa: CODE[, CODE...] - reason` after the hash (a reason: a word of two letters at least).
NOQA_OK = re.compile(r"#\s*noqa:\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*\s+-\s+.*[A-Za-z]{2}")
#: the type-ignore form, `type: ignore[code[, code...]]` then a second hash and the reason.
IGNORE_OK = re.compile(r"#\s*type:\s*ignore\[[a-z][a-z-]*(?:\s*,\s*[a-z][a-z-]*)*\]\s+#\s*.*[A-Za-z]{2}")


def _sources() -> list[Path]:
    found = []
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
                found.append(path)
    return found


def _comments(path: Path) -> list[tuple[int, str]]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return [(tok.start[0], tok.string) for tok in tokens if tok.type == tokenize.COMMENT]


def bad_silencers(comment: str) -> list[str]:
    """What is wrong with each silencer in one comment ([] when it is in the house form, or has none)."""
    problems = []
    for match in SILENCER.finditer(comment):
        rest = comment[match.start() :]
        if match.group(1).lower() == "noqa":
            if not NOQA_OK.match(rest):
                problems.append("noqa without a code and ' - reason'")
        elif not IGNORE_OK.match(rest):
            problems.append("type: ignore without [code] and '  # reason'")
    return problems


def test_the_rule_tells_good_from_bad() -> None:
    good = [
        "# noqa: BLE001 - the chain may be down for a while",
        "# noqa: E402, I001 - needs compat.install() first",
        "# type: ignore[call-arg]  # a pydantic-settings option",
        "# type: ignore[misc, name-defined]  # the base class comes from a module without types",
        "# a plain comment",
    ]
    bad = [
        "# noqa",
        "# noqa: BLE001",
        "# noqa: E402  (needs compat.install() first)",
        "# noqa - reason without a code",
        "# type: ignore",
        "# type: ignore  # a reason but no code",
        "# type: ignore[arg-type]",
        "# type: ignore[arg-type] reason without its own hash",
    ]
    assert [c for c in good if bad_silencers(c)] == []
    assert [c for c in bad if not bad_silencers(c)] == []


def test_every_noqa_and_type_ignore_has_a_code_and_a_reason() -> None:
    sources = _sources()
    assert len(sources) > 100, "the scan found too few files to be looking at the tree"
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {problem}: {comment}"
        for path in sources
        for line, comment in _comments(path)
        for problem in bad_silencers(comment)
    ]
    assert offenders == [], "\n".join(offenders)
