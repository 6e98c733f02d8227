"""Number types for argparse, shared by every command so that each refuses a bad value in
the same words ("must be 0 or more, got -1"); argparse prints the refusal on one line,
naming the option, and exits with status 2. Standard library only: avcache-predict --help
imports this and must stay fast."""

from __future__ import annotations

import argparse


def non_negative(text: str) -> int:
    """A count of 0 or more: a seed, a number of samples to show."""
    return _at_least(int(text), 0)


def positive(text: str) -> int:
    """A count of 1 or more: a number of worker processes."""
    return _at_least(int(text), 1)


def share(text: str) -> float:
    """A share from 0 to 1, both ends included."""
    value = float(text)
    if not 0 <= value <= 1:  # also refuses nan, which every comparison fails
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, got {text}")
    return value


def _at_least(value: int, minimum: int) -> int:
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
    return value
