"""The rule both models' saved configs follow: every key that shapes the model is stated, never defaulted."""

from __future__ import annotations


def check_config_keys(config, keys: tuple[str, ...], where: str, model: str):
    """Raise a `ValueError` naming `where` (a file, or a description) unless `config` is a mapping that
    states every key in `keys`."""
    if not isinstance(config, dict):
        raise ValueError(f"{where} holds a JSON {type(config).__name__}; expected an object of config keys.")
    missing = [key for key in keys if key not in config]
    if missing:
        raise ValueError(f"{where} lacks the key {missing[0]!r} (a {model} config must state {list(keys)}).")


__all__ = ["check_config_keys"]
