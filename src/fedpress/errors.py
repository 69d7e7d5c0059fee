"""User-facing errors: the CLI prints them as one line and exits non-zero, no traceback."""

import difflib


class FedpressError(Exception):
    """A problem the user can fix (a bad config key, a missing file, an impossible setting)."""


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """A config value outside its choices, with the closest as a suggestion."""
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise FedpressError(
            f"config key '{key}' = {value!r} is not one of {', '.join(choices)}{hint}"
        )
