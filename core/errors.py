"""The base of every expected failure: a message meant for a person, shown without a traceback."""


class AtollError(Exception):
    """An expected failure (bad input, missing weights, unreachable store, …).

    Command-line entry points print `error: <message>` and exit non-zero; anything else
    escaping is a bug and keeps its traceback.
    """
