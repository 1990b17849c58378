"""The documentation site: generated reference pages, the README, and the docstring examples.

The reference generators (docs/_ext/drfast_reference.py) need no Sphinx, so these tests run in the
plain test environment. When the site has been built (CI builds it before the tests), the built API
page is checked too.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import doctest
import importlib
import importlib.util
import io
import os
import re
from pathlib import Path

import pytest

import drfast
from drfast.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# The folder beside the repository that nothing in it may name (spelled in two parts so that this file,
# which looks for it, does not name it either).
OUTSIDE = "/".join(["..", "shared"])
BUILT_API = DOCS / "_build" / "html" / "reference" / "api.html"

# Modules whose docstring examples run as doctests (fast ones only).
DOCTEST_MODULES = ("drfast.common.errors", "drfast.common.doc_ids", "drfast.index.flat", "drfast.index.pq",
                   "drfast.index.load", "drfast.data.loaders", "drfast.search.rank_metrics", "drfast.search.runtime",
                   "drfast.eval.error_stats", "drfast.eval.trec", "drfast.train.losses", "drfast.train.adore")

# The README's two commands: what the guide and CI require, byte for byte.
DEMO_COMMAND = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
                "pip install '.[demo]' && drfast demo")
TEST_COMMAND = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
                "pip install '.[test]' && python -m pytest")


def _generator():
    spec = importlib.util.spec_from_file_location("drfast_reference", DOCS / "_ext" / "drfast_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return _generator()


@pytest.fixture(scope="module")
def cli_page(gen):
    return gen.cli_reference(build_parser())


def _public_names():
    return [name for name in drfast.__all__ if not name.startswith("__")]


def _choices_from_error(parser: argparse.ArgumentParser):
    """The subcommands as argparse lists them when given an unknown one (independent of the usage line)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        parser.parse_args(["no-such-command"])
    found = re.search(r"choose from (.*)\)", err.getvalue())
    assert found, err.getvalue()
    return [c.strip(" '") for c in found.group(1).split(",")]


def _section(page: str, command: str) -> str:
    start = page.index(f"## drfast {command}\n")
    end = page.find("\n## drfast ", start + 1)
    return page[start:] if end < 0 else page[start:end]


# ------------------------------------------------------------------ the Python API page

def test_api_page_has_an_entry_for_every_public_name(gen):
    page = gen.api_reference(drfast)
    entries = re.findall(r"^\.\. auto(?:class|function|data):: drfast\.(\w+)$", page, flags=re.M)
    assert sorted(entries) == sorted(_public_names())


def test_api_page_groups_names_by_subpackage(gen):
    grouped = gen.api_sections(drfast)
    assert {"FlatIndex", "PQIndex", "ShardedIndex"} <= {n for n, _ in grouped["index"]}
    assert "UsageError" in [n for n, _ in grouped["common"]]
    assert "adore_batch_loss" in [n for n, _ in grouped["train"]]


def test_every_public_name_has_a_docstring():
    missing = [name for name in _public_names() if not (getattr(drfast, name).__doc__ or "").strip()]
    assert missing == []


@pytest.mark.parametrize("config", [drfast.TrainConfig, drfast.AdoreConfig, drfast.StarConfig, drfast.MiningConfig])
def test_api_page_gives_every_setting_its_command_line_help(gen, config):
    lines = gen.config_fields(config)
    for field in dataclasses.fields(config):
        help_text = field.metadata["help"]
        assert f":param {field.name}: {gen.rst_text(help_text)}" in lines, field.name


def test_config_fields_skip_what_is_not_a_settings_dataclass(gen):
    assert gen.config_fields(drfast.FlatIndex) == []
    assert gen.config_fields(drfast.SearchResult) == []  # a dataclass, but its fields have no help


def test_help_text_is_escaped_for_restructuredtext(gen):
    assert gen.rst_text("a*b `c` x|y pos_ d_e") == r"a\*b \`c\` x\|y pos\_ d_e"


@pytest.mark.skipif(not BUILT_API.exists(), reason="the docs are not built (sphinx-build ... docs docs/_build/html)")
def test_built_api_page_documents_every_public_name():
    html = BUILT_API.read_text(encoding="utf-8")
    missing = [name for name in _public_names() if f'id="drfast.{name}"' not in html]
    assert missing == [], "missing from the built API page (a stale build? rerun the README's docs command)"


# ------------------------------------------------------------------ the CLI page

def test_cli_page_has_a_section_for_every_subcommand(cli_page):
    commands = _choices_from_error(build_parser())
    assert "adore" in commands and "demo" in commands
    for command in commands:
        assert f"## drfast {command}\n" in cli_page


def test_cli_page_shows_every_flag_of_every_subcommand(gen, cli_page):
    parser = build_parser()
    for command in _choices_from_error(parser):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out.getvalue()))
        assert "--help" in flags
        section = _section(cli_page, command)
        assert sorted(f for f in flags if f not in section) == [], command


@pytest.mark.parametrize("command, config", [("adore", drfast.AdoreConfig), ("star", drfast.StarConfig),
                                             ("mine", drfast.MiningConfig)])
def test_cli_page_shows_every_setting_of_a_command_with_its_default(cli_page, command, config):
    section = _section(cli_page, command)
    for field in dataclasses.fields(config):
        assert "--" + field.name.replace("_", "-") in section, (command, field.name)
    assert "default" in section


def test_cli_help_does_not_depend_on_the_terminal_width(gen, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = gen.cli_reference(build_parser())
    monkeypatch.setenv("COLUMNS", "250")
    assert gen.cli_reference(build_parser()) == narrow
    assert os.environ["COLUMNS"] == "250"  # restored


def test_subcommand_names_reject_a_parser_without_subcommands(gen):
    with pytest.raises(ValueError, match="parser"):
        gen.subcommand_names(argparse.ArgumentParser(prog="x"))


def test_write_if_changed_keeps_an_unchanged_page(gen, tmp_path):
    page = tmp_path / "reference" / "cli.md"
    assert gen.write_if_changed(page, "a\n")
    before = page.stat().st_mtime_ns
    assert not gen.write_if_changed(page, "a\n")
    assert page.stat().st_mtime_ns == before
    assert gen.write_if_changed(page, "b\n") and page.read_text() == "b\n"


# ------------------------------------------------------------------ README and pages

def test_readme_keeps_the_two_commands_and_fits_on_a_page():
    text = README.read_text(encoding="utf-8")
    assert DEMO_COMMAND in text.splitlines()
    assert TEST_COMMAND in text.splitlines()
    assert len(text.splitlines()) <= 200


def test_readme_links_into_the_site_resolve():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?:docs/)[^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) > 10
    assert [link for link in links if not (ROOT / link).exists()] == []


def test_docs_and_readme_refer_to_nothing_outside_the_repository(gen):
    files = [README, *DOCS.rglob("*.md"), *DOCS.rglob("*.py"), *DOCS.rglob("*.rst")]
    offenders = [str(f.relative_to(ROOT)) for f in files if "_build" not in f.parts
                 and OUTSIDE in f.read_text(encoding="utf-8")]
    assert offenders == []


def test_ci_builds_the_docs_with_warnings_as_errors():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "sphinx-build" in ci and " -W " in ci
    assert "docs" in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


# ------------------------------------------------------------------ docstring examples

@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
