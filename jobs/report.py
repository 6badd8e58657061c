"""``wspsr report DIR``: one self-contained HTML page about a corpus run (``DIR/report.html``).

Sections: hours per language and task, window durations, rejects by stage and reason (rows and hours),
characters per second, examples of rejected transcripts per reason, and the largest duplicate clusters.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.eval.report import render_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wspsr report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="a wspsr corpus output folder")
    args = parser.parse_args(argv)
    try:
        path = render_report(args.output)
    except FileNotFoundError as exc:
        print(f"wspsr report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wspsr report: {path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
