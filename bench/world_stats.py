"""The demo world's statistics next to the course database's (reference scaled to the world's size).

    python -m bench.world_stats --db sqlite:///x.db [--out docs/world.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.db import make_engine
from training.world import reference as ref
from training.world.stats import world_statistics


def rows(s: dict) -> list[tuple[str, str, str]]:
    scale = s["users"] / ref.N_USERS
    rate, prof, n = s["like_rate"], s["profile"], s["users"]
    hours = rate["hour"]
    mid = sum(hours[h] for h in range(10, 15)) / 5
    eve = sum(hours[h] for h in range(19, 22)) / 3
    others = [v for k, v in rate["country"].items() if k != "Russia"]
    return [
        ("users", f"{ref.N_USERS * scale:,.0f}", f"{n:,}"),
        ("feed rows", f"{ref.N_FEED_ROWS * scale:,.0f}", f"{s['feed_rows']:,}"),
        ("posts", "7,023", f"{s['posts']:,}"),
        ("period", "2021-10-01 .. 2021-12-29", f"{s['first_event'][:10]} .. {s['last_event'][:10]}"),
        ("event hours", "6-23", f"{min(s['hours_with_events'])}-{max(s['hours_with_events'])}"),
        ("share of views with target 1", "~0.12", f"{s['target_rate']:.3f}"),
        ("like rows / positive views", "~1", f"{s['likes'] / max(s['positive_views'], 1):.3f}"),
        ("users with a liked view", "almost all", f"{s['users_with_a_liked_view']:.3f}"),
        ("men share", f"{ref.GENDER_MALE_SHARE:.3f}", f"{prof['gender'].get(1, 0) / n:.3f}"),
        ("age quartiles", "19 / 24 / 33", " / ".join(map(str, s["age_quartiles"]))),
        ("Russia share", f"{143_035 / ref.N_USERS:.3f}", f"{prof['country'].get('Russia', 0) / n:.3f}"),
        ("Android share", f"{ref.ANDROID_SHARE:.3f}", f"{prof['os'].get('Android', 0) / n:.3f}"),
        ("ads share", f"{ref.ADS_SHARE:.3f}", f"{prof['source'].get('ads', 0) / n:.3f}"),
        ("cities (distinct)", "3,915 at scale 1.0", f"{s['cities']:,}"),
        ("top cities", "Moscow, Saint Petersburg, Novosibirsk", ", ".join(s["top_cities"])),
        ("views per post (min-max)", f"{6400 * scale:,.0f}-{22700 * scale:,.0f}",
         f"{s['views_per_post'][0]:,}-{s['views_per_post'][1]:,}"),
        ("like rate men / women", "0.125 / 0.111", f"{rate['gender']['1']:.3f} / {rate['gender']['0']:.3f}"),
        ("like rate Russia / other countries", "0.115 / 0.15-0.16",
         f"{rate['country']['Russia']:.3f} / {min(others):.3f}-{max(others):.3f}"),
        ("like rate exp_group 0..4", "0.10 / 0.14 / 0.14 / 0.10 / ~0.12",
         " / ".join(f"{rate['exp_group'][str(g)]:.3f}" for g in range(5))),
        ("like rate tech (lowest topic)", "~0.10", f"{rate['topic']['tech']:.3f} (lowest: "
                                                   f"{min(rate['topic'], key=rate['topic'].get)})"),
        ("like rate hours 10-14 / 19-21", "0.105-0.11 / ~0.14", f"{mid:.3f} / {eve:.3f}"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.world_stats")
    ap.add_argument("--db", required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    engine = make_engine(args.db)
    s = world_statistics(engine)
    engine.dispose()
    lines = [f"| statistic | course database (scaled to {s['users'] / ref.N_USERS:g}) | demo world |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows(s)]
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
