"""Parsers for the settings users type as text (comma-separated lists, a bandwidth), shared by the CLI and the app
so both accept and refuse the same input with the same message."""
from __future__ import annotations

from .config import ConfigError
from .repulsion import Bandwidth, validate_bandwidth


def parse_floats(text: str, name: str) -> tuple[float, ...]:
    """Numbers separated by commas (or semicolons), e.g. "1, 2.5,3"; an empty list is refused."""
    parts = [v.strip() for v in str(text).replace(";", ",").split(",") if v.strip()]
    try:
        values = tuple(float(v) for v in parts)
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{name}: the list is empty")
    return values


def parse_bandwidth(text: str | float) -> Bandwidth:
    """"auto" (the median heuristic) or a positive number."""
    value = text.strip() if isinstance(text, str) else text
    try:
        return validate_bandwidth(value if value == "auto" else float(value))
    except (TypeError, ValueError):
        raise ConfigError(f"bandwidth must be a positive number or 'auto', got {text!r}") from None


def parse_names(text: str) -> list[str]:
    """Comma-separated names with surrounding spaces and empty entries dropped."""
    return [v.strip() for v in str(text).split(",") if v.strip()]
