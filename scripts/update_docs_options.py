"""Rewrite the options tables in docs/ from the config dataclasses' fields.

    .venv/bin/python scripts/update_docs_options.py

Each table sits between `<!-- options: module.Class -->` and `<!-- /options -->` in a
docs page; a table of registered methods between `<!-- methods: module.function -->` and
`<!-- /methods -->` is the function's markdown (e.g. `pipelines.grpo.registry.
methods_table`). `tests/test_docs_options.py` fails when a table is out of date.
"""

import importlib
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- options: ([\w.]+) -->\n)(.*?)(<!-- /options -->)", re.S)
METHODS = re.compile(r"(<!-- methods: ([\w.]+) -->\n)(.*?)(<!-- /methods -->)", re.S)


def render(text):
    """`text` with every options block regenerated."""
    from pipelines.common.cli import options_table

    def table(match):
        module, _, name = match.group(2).rpartition(".")
        config_class = getattr(importlib.import_module(module), name)
        return f"{match.group(1)}{options_table(config_class)}\n{match.group(4)}"

    def methods(match):
        module, _, name = match.group(2).rpartition(".")
        return f"{match.group(1)}{getattr(importlib.import_module(module), name)()}\n" \
               f"{match.group(4)}"

    return METHODS.sub(methods, BLOCK.sub(table, text))


def pages():
    return [page for page in sorted((ROOT / "docs").glob("*.md")) if BLOCK.search(page.read_text())]


def main():
    sys.path.insert(0, str(ROOT))
    for page in pages():
        text = page.read_text()
        updated = render(text)
        if updated != text:
            page.write_text(updated)
            print(f"updated {page.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
