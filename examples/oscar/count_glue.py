#!/usr/bin/env python
"""Count the lines an Oscar shop adds to use visualsearch.

The adopter's lines in the example's settings, urls and templates sit between
``# visualsearch glue: begin`` / ``# visualsearch glue: end`` (``{# visualsearch glue: … #}``
in templates). This prints the count per file and in all, and returns the total; blank lines
and comments (``#`` lines, ``{# … #}`` template comments) do not count.

    python examples/oscar/count_glue.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN = re.compile(r"^\s*(#|\{#)\s*visualsearch glue: begin\b")
END = re.compile(r"^\s*(#|\{#)\s*visualsearch glue: end\b")
COMMENT = re.compile(r"^\s*(#|\{#.*#\}\s*$)")


def glue_files(root: Path = HERE) -> list[Path]:
    """The example's settings, urls and templates."""
    package = root / "oscar_example"
    return [package / "settings.py", package / "urls.py", *sorted(root.glob("templates/**/*.html"))]


def count_lines(path: Path) -> int:
    """Non-blank, non-comment lines between the glue markers of one file."""
    count = 0
    inside = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if BEGIN.match(line):
            if inside:
                raise ValueError(f"{path}:{number}: glue begins twice")
            inside = True
        elif END.match(line):
            if not inside:
                raise ValueError(f"{path}:{number}: glue ends without a beginning")
            inside = False
        elif inside and line.strip() and not COMMENT.match(line):
            count += 1
    if inside:
        raise ValueError(f"{path}: glue begins but never ends")
    return count


def main(root: Path = HERE) -> int:
    """Print the glue lines per file and in all; return the total."""
    total = 0
    for path in glue_files(root):
        lines = count_lines(path)
        total += lines
        print(f"{lines:3d}  {path.relative_to(root)}")
    print(f"{total:3d}  glue lines in all")
    return total


if __name__ == "__main__":
    main()
    sys.exit(0)
