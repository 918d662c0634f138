"""The Functions Blueprints, one module per area. Each trigger function is a thin adapter over `shared`."""

import datetime as dt


def utc_now() -> dt.datetime:
    """The time a function runs as of: now, in UTC, to the second (jobs are re-runnable as of any `now`)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
