"""The number types every command line shares (common/arguments.py): what they accept, the
words they refuse in, and that each command uses them."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from avcache.common.arguments import non_negative, positive, share
from avcache.inspection import cli as inspect_cli
from avcache.sample import cli as sample_cli
from avcache.train import predict
from evaluation import generalisation

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("parse,text,value", [
    (non_negative, "0", 0), (non_negative, "7", 7),
    (positive, "1", 1), (positive, "12", 12),
    (share, "0", 0.0), (share, "1", 1.0), (share, "0.25", 0.25),
])  # fmt: skip
def test_values_in_range_are_returned_as_numbers(parse, text, value):
    assert parse(text) == value and type(parse(text)) is type(value)


@pytest.mark.parametrize("parse,text,message", [
    (non_negative, "-1", "must be 0 or more, got -1"),
    (positive, "0", "must be 1 or more, got 0"),
    (share, "1.5", "must be a share from 0 to 1, got 1.5"),
    (share, "-0.1", "must be a share from 0 to 1, got -0.1"),
    (share, "nan", "must be a share from 0 to 1, got nan"),
])  # fmt: skip
def test_values_out_of_range_are_refused_in_the_shared_words(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{message}$"):
        parse(text)


@pytest.mark.parametrize("parse,text", [(non_negative, "2.5"), (positive, "x"), (share, "x")])
def test_what_is_not_a_number_is_left_to_argparse(parse, text):
    """argparse turns a ValueError into "invalid <type name> value", naming the type."""
    with pytest.raises(ValueError):
        parse(text)


# Each command with a value out of range: exit status 2 and the shared words for its option.
COMMANDS = {
    "avcache-sample --seed": lambda tmp: sample_cli.main([str(tmp / "out"), "--seed", "-1"]),
    "avcache-sample --jobs": lambda tmp: sample_cli.main([str(tmp / "out"), "--jobs", "0"]),
    "avcache-inspect sheet -n": lambda tmp: inspect_cli.main([str(tmp), "sheet", "-n", "-1"]),
    "avcache-inspect audit --bootstrap": lambda tmp: inspect_cli.main(
        [str(tmp), "audit", "--bootstrap", "-1"]
    ),
    "avcache-predict --max-fallback": lambda tmp: predict.main(
        ["--run", str(tmp), "--list", str(tmp / "list.csv"), "--max-fallback", "2"]
    ),
    "generalisation --lip-sync": lambda tmp: generalisation.parse_args(
        ["--out", str(tmp), "--lip-sync", "2"]
    ),
}
WORDS = {
    "avcache-sample --seed": "argument --seed: must be 0 or more, got -1",
    "avcache-sample --jobs": "argument --jobs: must be 1 or more, got 0",
    "avcache-inspect sheet -n": "argument -n: must be 0 or more, got -1",
    "avcache-inspect audit --bootstrap": "argument --bootstrap: must be 0 or more, got -1",
    "avcache-predict --max-fallback": "argument --max-fallback: must be a share from 0 to 1, got 2",
    "generalisation --lip-sync": "argument --lip-sync: must be a share from 0 to 1, got 2",
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_in_the_shared_words(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        COMMANDS[command](tmp_path)
    assert stop.value.code == 2
    assert WORDS[command] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# avcache-predict --help in a fresh interpreter: what it imported of what builds a model.
PREDICT_HELP = """
import sys
from avcache.train.predict import main
try:
    main(["--help"])
except SystemExit:
    pass
print(sorted({"torch", "timm", "torchvision"} & set(sys.modules)))
"""


def test_the_types_and_avcache_predict_help_import_no_torch():
    """avcache-predict imports the types before its --help: torch would cost it seconds."""
    code = "import sys, avcache.common.arguments; print({'numpy', 'torch'} & set(sys.modules))"
    for script, nothing in [(code, "set()"), (PREDICT_HELP, "[]")]:
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                              text=True, timeout=120, check=True)  # fmt: skip
        assert done.stdout.splitlines()[-1] == nothing, done.stdout + done.stderr
