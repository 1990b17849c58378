"""The generated reference pages: the Python API from `drfast.__all__` and the CLI from `build_parser()`.

Both pages are written when the Sphinx build starts (``config-inited``), so a name added to
`drfast.__all__` or a flag added to the parser shows up in the next build without anyone editing a
page; they are never written by hand and are not committed (see .gitignore).

The CLI page uses only public argparse API: the subcommand names come from the top-level usage line
(``{info,check,...}``) and each command's text is its own ``--help`` output, captured as a user would
see it at a fixed width, so every flag appears with its help and default exactly as ``--help`` shows.

The settings dataclasses (TrainConfig, AdoreConfig, ...) declare each field's help once, with
`option(...)`; `config_fields` turns it into the field descriptions of their API entries, so the
Python and command-line references say the same thing.

The functions that build the text import nothing from Sphinx, so tests/test_docs.py checks them
without a docs build.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import os
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

HELP_WIDTH = "100"  # a fixed width, so the generated page does not depend on the terminal
# The sections of the API page, in order: the subpackage a public name is defined in -> its title.
SECTIONS = (
    ("common", "Errors and shared types"),
    ("search", "The fused search"),
    ("index", "Indexes"),
    ("data", "Data"),
    ("encode", "Encoders"),
    ("train", "Training"),
    ("negatives", "Negatives"),
    ("eval", "Evaluation"),
)
API_PAGE = Path("reference") / "api.rst"
CLI_PAGE = Path("reference") / "cli.md"


def subcommand_names(parser: argparse.ArgumentParser) -> List[str]:
    """The subcommands, read from the usage line argparse prints (``{a,b,c}``)."""
    usage = " ".join(parser.format_usage().split())  # usage may wrap; the choices never contain spaces
    found = re.search(r"\{([^{}]+)\}", usage)
    if found is None:
        raise ValueError("parser: its usage line lists no subcommands")
    return found.group(1).split(",")


def command_help(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str:
    """What ``drfast ARGV --help`` prints, at HELP_WIDTH columns."""
    out = io.StringIO()
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH  # argparse's formatter reads the width from here
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            parser.parse_args([*argv, "--help"])
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return out.getvalue().rstrip() + "\n"


def cli_reference(parser: argparse.ArgumentParser) -> str:
    """The CLI page (MyST Markdown): the top-level help, then one section per subcommand."""
    parts = ["# Command line\n",
             "Generated from `drfast.cli.build_parser()` when the docs are built: each section is what\n"
             "`drfast COMMAND --help` prints, every flag with its help and default.\n",
             "```text\n" + command_help(parser, []) + "```\n"]
    for name in subcommand_names(parser):
        parts.append(f"(cli-{name})=\n## drfast {name}\n")
        parts.append("```text\n" + command_help(parser, [name]) + "```\n")
    return "\n".join(parts)


def _section_of(module_name: str) -> str:
    parts = module_name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "drfast" else ""


def api_sections(package) -> Dict[str, List[Tuple[str, object]]]:
    """The public names of `package.__all__` (except ``__version__``), grouped by defining subpackage."""
    grouped: Dict[str, List[Tuple[str, object]]] = {}
    for name in package.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(package, name)
        grouped.setdefault(_section_of(getattr(obj, "__module__", "") or ""), []).append((name, obj))
    return grouped


def _directive(package_name: str, name: str, obj) -> List[str]:
    if isinstance(obj, type):
        # Exceptions keep the base class's members out of the page; classes list their own members.
        members = [] if issubclass(obj, BaseException) else ["   :members:", "   :show-inheritance:"]
        return [f".. autoclass:: {package_name}.{name}", *members, ""]
    if callable(obj):
        return [f".. autofunction:: {package_name}.{name}", ""]
    return [f".. autodata:: {package_name}.{name}", "   :no-value:", ""]


def api_reference(package) -> str:
    """The Python API page (reStructuredText): an autodoc entry for every name in `package.__all__`."""
    title = "Python API"
    lines = [title, "=" * len(title), "",
             f"Generated from ``{package.__name__}.__all__`` when the docs are built; every name below is",
             f"importable as ``{package.__name__}.NAME``. Version: ``{package.__version__}``.", "",
             f".. currentmodule:: {package.__name__}", ""]
    grouped = api_sections(package)
    order = [key for key, _ in SECTIONS] + sorted(k for k in grouped if k not in dict(SECTIONS))
    titles = dict(SECTIONS)
    for key in order:
        if key not in grouped:
            continue
        heading = titles.get(key, key or "Other")
        lines += [heading, "-" * len(heading), ""]
        for name, obj in grouped[key]:
            lines += _directive(package.__name__, name, obj)
    return "\n".join(lines)


def rst_text(text: str) -> str:
    """Plain help text made safe as reStructuredText (no accidental emphasis, roles or references)."""
    text = text.replace("\\", "\\\\")
    for char in "*`|":
        text = text.replace(char, "\\" + char)
    return re.sub(r"_(?=\W|$)", r"\\_", text)


def config_fields(cls) -> List[str]:
    """reStructuredText ``:param:`` fields giving each field of a settings dataclass its help (the
    `option(...)` help that `drfast COMMAND --help` shows), so the API page and the CLI share one text;
    autodoc adds the types and the signature the defaults. Empty for anything that is not a dataclass
    with such help."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return []
    fields = [f for f in dataclasses.fields(cls) if f.init and "help" in f.metadata]
    if not fields:
        return []
    return ["", *(f":param {f.name}: {rst_text(f.metadata['help'])}" for f in fields), ""]


def _on_process_docstring(app, what, name, obj, options, lines) -> None:
    if what == "class":
        lines.extend(config_fields(obj))


def write_if_changed(path: Path, text: str) -> bool:
    """Writes `text` to `path` (atomically) unless it already holds it; an unchanged page keeps its
    mtime, so Sphinx does not rebuild it."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    from drfast.common.atomic import write_text_atomic
    write_text_atomic(path, text)
    return True


def generate(srcdir: Path) -> None:
    """Writes both generated pages under `srcdir` (the docs folder)."""
    package = importlib.import_module("drfast")
    cli = importlib.import_module("drfast.cli")
    write_if_changed(Path(srcdir) / API_PAGE, api_reference(package))
    write_if_changed(Path(srcdir) / CLI_PAGE, cli_reference(cli.build_parser()))


def _on_config_inited(app, config) -> None:
    generate(Path(app.srcdir))


def setup(app):
    app.connect("config-inited", _on_config_inited)
    app.connect("autodoc-process-docstring", _on_process_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
