"""The root of nnfuse's user-facing errors: the CLI prints these without a traceback."""


class NnfuseError(Exception):
    """An error about the user's model, file or request (not a bug in nnfuse)."""
