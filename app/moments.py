"""The `time` of a request: ISO 8601 only, converted to naive UTC with its range checked.

pydantic alone reads a bare number as an epoch time (and above ~2e10 silently as milliseconds), and lets
through moments whose zone pushes them out of the calendar once converted to UTC
(`0001-01-01T00:00:00+01:00`), where `astimezone` then overflows into a 500. Both are bad input here.
"""

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def as_utc(moment: datetime) -> datetime:
    """Naive times are UTC; aware ones are converted. Returned naive, as the feed stores them.
    Raises ValueError (not OverflowError) when the conversion leaves the years 1-9999."""
    if moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        raise ValueError("outside the years 1-9999 once converted to UTC") from None


def _iso_only(value: object) -> object:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError("expected an ISO 8601 moment such as 2021-12-27T19:30:00 or 2021-12-27T19:30:00+03:00 "
                         "(bare numbers are not read as epoch times)")
    return value


# a request moment: ISO 8601 text in, naive UTC out; anything else is a 422 naming the field
Moment = Annotated[datetime, BeforeValidator(_iso_only), AfterValidator(as_utc)]
