"""compile() options: every option the code reads is declared, and a misspelled one is an error."""
import os
import re

import numpy as np
import pytest

import nnfuse
from nnfuse.ir import Builder, NnfuseError
from nnfuse.options import BACKEND_OPTIONS, PASS_OPTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READ = re.compile(r"(?:ctx\.get|ctx\.options\.get|options\.get|options\.pop|opts\.get)\(\"([a-z_0-9]+)\"")


def test_every_option_read_by_passes_and_backends_is_declared():
    found = set()
    for folder in ("passes", "backends"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".py"):
                    found |= set(READ.findall(open(os.path.join(dirpath, f)).read()))
    missing = found - set(PASS_OPTIONS) - BACKEND_OPTIONS - {"backend"}
    assert not missing, f"options read but not declared in compiler/options.py: {sorted(missing)}"


def _graph():
    b = Builder("g")
    x = b.input("x", [2, 3])
    return b.output(b.relu(x))


def test_misspelled_option_is_an_error_with_a_suggestion():
    with pytest.raises(NnfuseError, match=r"unknown option.*'quantise'.*did you mean 'quantize'"):
        nnfuse.compile(_graph(), quantise="w8a8")


def test_declared_and_backend_options_are_accepted():
    cm = nnfuse.compile(_graph(), backend="reference", fold_max_elements=10, seed=1)
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    np.testing.assert_array_equal(cm(x), np.maximum(x, 0))
