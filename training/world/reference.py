"""Statistics of the course database at scale 1.0, which the demo world reproduces."""

from datetime import UTC, datetime

import numpy as np

from app import columns as c

N_USERS = 163_205
N_FEED_ROWS = 76_900_000
START = int(datetime(2021, 10, 1, tzinfo=UTC).timestamp())
N_DAYS = 90  # 2021-10-01 .. 2021-12-29
FIRST_HOUR, LAST_HOUR = 6, 23

GENDER_MALE_SHARE = 89_980 / N_USERS
ANDROID_SHARE = 105_972 / N_USERS
ADS_SHARE = 101_685 / N_USERS
AGE_QUARTILES = (19, 24, 33)
N_CITIES = 3_915
TOP_CITIES = {"Moscow": 21_874, "Saint Petersburg": 6_904, "Novosibirsk": 1_987}
COUNTRY_COUNTS = {
    "Russia": 143_035, "Ukraine": 8_273, "Belarus": 3_293, "Kazakhstan": 3_172, "Turkey": 1_606,
    "Finland": 1_599, "Azerbaijan": 1_542, "Estonia": 178, "Latvia": 175, "Cyprus": 170,
    "Switzerland": 162,
}

# ~76.9M rows = views + likes, likes ~ positive views ~ 12% of views -> ~68.7M views, ~421 per user.
# The feed keeps the first showing of a post, which removes ~3% of draws; the mean below allows for it.
VIEWS_LOG_SIGMA = 0.8
VIEWS_LOG_MEAN = float(np.log(448) - VIEWS_LOG_SIGMA**2 / 2)
VIEWS_PER_SESSION = 10
# Three popularity tiers of the random feed: 6.4k-22.7k views per post at scale 1.0
EXPOSURE_TIER_SHARES = (0.7, 0.2, 0.1)
EXPOSURE_TIER_WEIGHTS = (1.0, 1.75, 3.0)

TARGET_RATE = 0.12
LIKE_RATE_GENDER = (0.111, 0.125)  # women, men
LIKE_RATE_EXP_GROUP = (0.10, 0.14, 0.14, 0.10, 0.12)
_COUNTRY_RATE = {"Russia": 0.115, "Ukraine": 0.15, "Belarus": 0.155, "Kazakhstan": 0.155,
                 "Turkey": 0.16, "Finland": 0.15, "Azerbaijan": 0.16}
_TOPIC_RATE = {"business": 0.115, "covid": 0.12, "entertainment": 0.125, "movie": 0.125,
               "politics": 0.12, "sport": 0.13, "tech": 0.10}
# Mild drift over the weeks (log-odds, first day to last): covid fatigue, a winter film season.
TOPIC_DRIFT = {"covid": -0.4, "movie": 0.2}


def like_rate_country() -> list[float]:
    return [_COUNTRY_RATE.get(name, 0.155) for name in c.COUNTRIES]


def like_rate_topic() -> list[float]:
    return [_TOPIC_RATE[t] for t in c.TOPICS]


def like_rate_hour() -> list[float | None]:
    rates: list[float | None] = [None] * 24
    for h in range(FIRST_HOUR, LAST_HOUR + 1):
        rates[h] = 0.1075 if 10 <= h <= 14 else 0.14 if 19 <= h <= 21 else 0.125 if h >= 22 else 0.12
    return rates


def hour_activity() -> np.ndarray:
    """Share of sessions starting in each hour; nothing outside 6-23."""
    weights = np.zeros(24)
    weights[FIRST_HOUR:LAST_HOUR + 1] = [0.3, 0.5, 0.7, 0.8, 0.9, 0.9, 1.0, 1.0, 0.9, 0.9, 0.9, 1.0,
                                         1.1, 1.2, 1.3, 1.2, 0.9, 0.6]
    return weights / weights.sum()


def profile_topic_table() -> np.ndarray:
    """Log-odds of (age band, gender) x topic: tastes a profile predicts."""
    t = {name: i for i, name in enumerate(c.TOPICS)}
    table = np.zeros((4, 2, len(c.TOPICS)))
    by_age = [  # 14-20, 21-30, 31-45, 46+
        {"movie": 0.35, "entertainment": 0.25, "politics": -0.35, "business": -0.25},
        {"movie": 0.15, "tech": 0.1},
        {"politics": 0.2, "business": 0.2, "movie": -0.1},
        {"politics": 0.4, "business": 0.25, "covid": 0.25, "movie": -0.3, "entertainment": -0.2},
    ]
    by_gender = [{"entertainment": 0.25, "movie": 0.1, "sport": -0.3},  # women
                 {"sport": 0.35, "tech": 0.2, "entertainment": -0.15}]  # men
    for band, effects in enumerate(by_age):
        for g, g_effects in enumerate(by_gender):
            for name, v in effects.items():
                table[band, g, t[name]] += v
            for name, v in g_effects.items():
                table[band, g, t[name]] += v
    return table
