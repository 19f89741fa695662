"""A/B assignment with the course's convention: deterministic per user and salt."""

import hashlib

CONTROL, TEST = "control", "test"


def exp_group(user_id: int, salt: str, control_percent: int) -> str:
    """`control` when md5(str(user_id) + salt) mod 100 < control_percent, else `test`.

    >>> exp_group(200, "startml-ab", 50) == exp_group(200, "startml-ab", 50)
    True
    >>> exp_group(200, "startml-ab", 0), exp_group(200, "startml-ab", 100)
    ('test', 'control')
    """
    bucket = int(hashlib.md5((str(user_id) + salt).encode()).hexdigest(), 16) % 100
    return CONTROL if bucket < control_percent else TEST
