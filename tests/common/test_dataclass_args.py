"""Flags from dataclass fields: types, switches, choices, required flags, and the dataclass back."""
import argparse
from dataclasses import dataclass
from typing import List, Optional, Tuple

import pytest

from drfast.common.dataclass_args import add_arguments, from_args, option


@dataclass
class Settings:
    path: Optional[str] = option(None, "where", required=True)
    count: int = option(3, "how many")
    scale: Optional[float] = option(None, "a factor (default: none)")
    mode: str = option("fast", "how", choices=("fast", "slow"))
    verbose: bool = option(False, "say more")
    dedupe: bool = option(True, "drop copies")
    specs: Tuple[str, ...] = option((), "extra specs", metavar="SPEC")
    internal: int = 7  # no help: not a flag


def parser(**defaults):
    p = argparse.ArgumentParser()
    add_arguments(p, Settings, ("path", "count", "scale", "mode", "verbose", "dedupe", "specs"), **defaults)
    return p


def test_defaults_round_trip():
    args = parser().parse_args(["--path", "x"])
    assert from_args(Settings, args) == Settings(path="x")


def test_types_switches_choices_and_lists():
    args = parser().parse_args(["--path", "x", "--count", "5", "--scale", "0.5", "--mode", "slow", "--verbose",
                                "--no-dedupe", "--specs", "a", "b"])
    assert from_args(Settings, args) == Settings("x", 5, 0.5, "slow", True, False, ("a", "b"))
    assert from_args(Settings, args, count=9).count == 9
    for bad in (["--count", "1.5"], ["--mode", "medium"], []):  # a wrong type, a wrong choice, --path missing
        with pytest.raises(SystemExit):
            parser().parse_args((["--path", "x"] if bad else []) + bad)


def test_a_command_default_replaces_the_field_default_and_the_required_flag():
    p = parser(path="here", count=4)
    args = p.parse_args([])
    assert (args.path, args.count) == ("here", 4)
    help_text = p.format_help()
    assert "how many (default: 4)" in help_text and "say more\n" in help_text  # no "(default: False)"


def test_only_fields_with_help_and_supported_types_become_flags():
    with pytest.raises(ValueError, match="names: Settings has no option 'internal'"):
        add_arguments(argparse.ArgumentParser(), Settings, ("internal",))

    @dataclass
    class Odd:
        pairs: List[int] = option(None, "a list of ints")
        mapping: dict = option(None, "a dict")

    add_arguments(argparse.ArgumentParser(), Odd, ("pairs",))  # a list: strings
    with pytest.raises(TypeError, match="no command-line flag for a field of type"):
        add_arguments(argparse.ArgumentParser(), Odd, ("mapping",))


def test_flags_added_are_returned_and_a_command_may_require_a_field():
    p = argparse.ArgumentParser()
    group = p.add_argument_group("settings")  # a group of a parser takes the flags as the parser does
    flags = add_arguments(group, Settings, ("path", "count", "dedupe"), required=("count",), count=None)
    assert flags == {"path": "--path", "count": "--count", "dedupe": "--dedupe"}
    with pytest.raises(SystemExit):  # --count required by this command, though its field has a default
        p.parse_args(["--path", "x"])
    assert p.parse_args(["--path", "x", "--count", "2"]).count == 2


def test_takes_value_tells_switches_from_valued_flags():
    from drfast.common.dataclass_args import takes_value

    assert [takes_value(Settings, name) for name in ("path", "count", "scale", "mode", "verbose", "dedupe",
                                                     "specs")] == [True, True, True, True, False, False, True]
