"""The base of every expected failure: a message meant for a person, shown without a traceback."""


class AtollError(Exception):
    """An expected failure (bad input, missing weights, unreachable store, …).

    Command-line entry points print `error: <message>` and exit non-zero; anything else
    escaping is a bug and keeps its traceback.
    """


class BadInputError(AtollError):
    """The run's spec or data is wrong, so no retry can succeed: a dataset that does not
    exist, fewer examples than clusters, missing weights, a spec that does not match the
    data already stored. A stage that raises it exits with `atoll.stages.ExitCode.BAD_INPUT`
    and the run fails at once (a store outage is never one of these: it is retried).
    """
