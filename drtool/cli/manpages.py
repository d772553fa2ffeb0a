"""Man pages generated from the CLI itself (click-man), shipped in drtool/man/ and installed to share/man/man1.

Regenerate after changing a command or an option: `python -m drtool.cli.manpages`
(tests/unit/test_cli_docs.py fails while the shipped pages are stale). click-man is
needed only to generate them (it is in the `test` extra), not to read them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

MAN_DIR = Path(__file__).resolve().parent.parent / "man"
# A fixed date keeps the pages reproducible: the text changes only when the CLI does.
MAN_DATE = "2026-12"


def render(target: Path) -> list[Path]:
    """Write drtool.1, drtool-backup.1, drtool-schedule-install.1 ... into target."""
    from click_man.core import write_man_pages

    from drtool import __version__
    from drtool.cli import _register_all, cli

    _register_all()
    target.mkdir(parents=True, exist_ok=True)
    write_man_pages("drtool", cli, version=__version__, target_dir=str(target), date=MAN_DATE)
    return sorted(target.glob("*.1"))


def rendered() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        return {p.name: p.read_text() for p in render(Path(tmp))}


def write_shipped() -> list[Path]:
    for old in MAN_DIR.glob("*.1"):
        old.unlink()
    return render(MAN_DIR)


if __name__ == "__main__":
    for path in write_shipped():
        print(path)
