"""argparse value types with their ranges, shared by the CLI, the evaluation and the training flags.

A value out of range is an argparse error: one line naming the flag and what was expected, exit 2.
"""

from __future__ import annotations

import argparse
import math

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit value


def int_range(low: int, high: int | None = None, what: str = "an integer"):
    """An `int` in `[low, high]` (`high=None`: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"{value} is out of range; expected {what} {bound}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def float_range(low: float, high: float = math.inf, low_open: bool = False, what: str = "a number"):
    """A finite `float` in `[low, high]` (`(low, high]` with `low_open`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            left = "(" if low_open else "["
            right = "]" if math.isfinite(high) else ")"
            raise argparse.ArgumentTypeError(
                f"{text} is out of range; expected a finite {what} in {left}{low}, {high}{right}"
            )
        return value

    parse.__name__ = what
    return parse


positive_int = int_range(1, what="a positive integer")
non_negative_int = int_range(0, what="an integer >= 0")
seed = int_range(0, MAX_SEED, what="a seed")
positive_float = float_range(0.0, low_open=True, what="positive number")

__all__ = ["MAX_SEED", "float_range", "int_range", "non_negative_int", "positive_float", "positive_int", "seed"]
