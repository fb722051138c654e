"""Write the README's sampler table from the settings declared in axw/specs.py.

    python scripts/sampler_table.py            # README.md
    python scripts/sampler_table.py --check    # exit 1 when the README's table is out of date
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from axw.specs import TABLE_END, TABLE_START, sampler_table, write_table  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(Path(__file__).resolve().parent.parent / "README.md"))
    parser.add_argument("--check", action="store_true", help="only check that the table is up to date")
    args = parser.parse_args(argv)
    if args.check:
        text = Path(args.path).read_text(encoding="utf-8")
        inside = text[text.index(TABLE_START) + len(TABLE_START):text.index(TABLE_END)].strip()
        print("up to date" if inside == sampler_table() else "out of date: run python scripts/sampler_table.py")
        return 0 if inside == sampler_table() else 1
    print(f"{args.path}: {'updated' if write_table(args.path) else 'already up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
