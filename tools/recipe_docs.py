"""Regenerate the recipe-key tables of docs/recipes.md from the components' typed configs.

    python tools/recipe_docs.py          # rewrite docs/recipes.md
    python tools/recipe_docs.py --check  # exit 1 when the file is out of date
"""

import os
import sys

from compressor.core.io import atomic_write_text
from compressor.recipe.docs import render

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "recipes.md")


def main(argv):
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    new = render(text)
    if "--check" in argv:
        if new != text:
            print(f"{DOC} is out of date: run python tools/recipe_docs.py")
            return 1
        return 0
    atomic_write_text(DOC, new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
