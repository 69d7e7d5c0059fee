"""User-facing errors: the CLI prints them as one line and exits non-zero, no traceback."""


class FedpressError(Exception):
    """A problem the user can fix (a bad config key, a missing file, an impossible setting)."""
