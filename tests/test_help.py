"""`--help`: every flag has help text and shows its default; `--version`; required --output marked."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from llmpress.cli import build_parser

PARSER = build_parser()
VERBS = PARSER._subparsers._group_actions[0].choices


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_flag_has_help_and_its_default(verb):
    sp = VERBS[verb]
    text = " ".join(sp.format_help().split())
    for act in sp._actions:
        if isinstance(act, argparse._HelpAction):
            continue
        assert act.help, f"{verb} {act.option_strings or act.dest}: no help text"
        if act.option_strings and act.default not in (None, False):
            assert f"default: {act.default}" in text or "default" in (act.help or ""), (verb, act.option_strings)


@pytest.mark.parametrize("verb", ["compress", "bench"])
def test_required_output_is_marked(verb):
    usage = VERBS[verb].format_usage()
    assert "--output DIR" in usage and "[--output DIR]" not in usage, usage


def test_version():
    p = subprocess.run([sys.executable, "-m", "llmpress.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("llmpress ") and len(p.stdout.split()) == 2, p.stdout + p.stderr
