"""Conversion of the original DetailFlow release into this package's formats."""

from .original import convert_release, load_original

__all__ = ["convert_release", "load_original"]
