"""The README is the front door: every `cxr` command it shows must exist, with the options and choices it
shows. An option renamed in the code and not in the README would otherwise fail only for the user who
copies it.
"""

import argparse
import itertools
import re
from pathlib import Path

from cxr.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(text: str) -> list[str]:
    """What follows `cxr` in the README's code blocks (comments and line continuations removed) and in its
    inline code spans.
    """
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
            if line.lstrip().startswith("#"):
                continue
            found = re.search(r"(?:^|\s)(?:\S*/)?cxr\s+(\S.*)", line.split(" #")[0])
            commands += [found.group(1).strip()] if found else []
    for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        found = re.match(r"(?:\S*/)?cxr\s+(\S.*)", span)
        commands += [found.group(1).strip()] if found else []
    return commands


def problems(command: str, parser: argparse.ArgumentParser) -> list[str]:
    """An unknown subcommand, an option the subcommand lacks, or a literal value outside an option's choices
    (placeholders such as N, DIR or a|b alternatives are not values)."""
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    words = command.replace("[", " ").replace("]", " ").split()
    if words[0] in {option for action in parser._actions for option in action.option_strings}:
        return []
    if words[0] not in subcommands:
        return [f"no subcommand {words[0]!r}"]
    actions = {option: action for action in subcommands[words[0]]._actions for option in action.option_strings}
    found = []
    for word, following in itertools.pairwise([*words[1:], ""]):
        flag, _, attached = word.partition("=")
        if not flag.startswith("--"):
            continue
        if flag not in actions:
            found.append(f"no option {flag}")
            continue
        value = attached or following
        choices = actions[flag].choices
        if choices and value and not value.startswith("-") and re.fullmatch(r"[a-z0-9][a-z0-9.-]*", value) \
                and value not in choices:
            found.append(f"{flag} {value}: not one of {', '.join(map(str, choices))}")
    return found


def test_every_command_in_the_readme_parses_with_its_options_and_choices():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) > 50  # the extraction still finds the README's commands
    parser = build_parser()
    wrong = {command: found for command in commands if (found := problems(command, parser))}
    assert not wrong, wrong


def test_the_check_catches_a_renamed_option_and_a_wrong_choice():
    parser = build_parser()
    assert problems("train --data DIR --recipe augmented-cosine --epochs N", parser) == []
    assert problems("train --data DIR --learning-rat 0.1", parser) == ["no option --learning-rat"]
    assert problems("predict RUN x.png --engine onxx", parser)[0].startswith("--engine onxx: not one of")
    assert problems("predict RUN x.png --engine auto|keras", parser) == []  # alternatives, not a value
    assert problems("fit --data DIR", parser) == ["no subcommand 'fit'"]
    assert readme_commands("```\n$ cxr train \\\n   --data d  # a comment --nothing\n```\nthen `cxr demo`") == [
        "train --data d", "demo"]
