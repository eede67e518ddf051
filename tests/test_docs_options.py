"""The docs' options tables are the config dataclasses' own fields and help texts."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "update_docs_options", ROOT / "scripts" / "update_docs_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_options_table_in_the_docs_is_up_to_date():
    script = _script()
    pages = script.pages()
    assert {page.name for page in pages} == {"grpo.md", "image.md", "sac.md"}
    for page in pages:
        text = page.read_text()
        assert script.render(text) == text, (
            f"{page} is out of date: run .venv/bin/python scripts/update_docs_options.py")


def test_every_config_field_has_help():
    import dataclasses

    from pipelines.grpo.config import GRPOConfig

    missing = [f.name for f in dataclasses.fields(GRPOConfig) if not f.metadata.get("help")]
    assert not missing
