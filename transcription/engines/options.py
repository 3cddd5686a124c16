"""Values of the query parameters an engine takes (its `Capabilities.options`)."""


def parse_flag(value: str) -> bool:
    """A boolean query parameter: 'true' or 'false', nothing else (ValueError)."""
    if value not in ("true", "false"):
        raise ValueError("'true' or 'false'")
    return value == "true"
