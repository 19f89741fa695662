"""Statistics of the three tables, computed in the database, to set beside the reference."""

from sqlalchemy import Engine, func, select

from app import columns as c
from app.tables import feed_data, post_text_df, user_data


def _rate_by(conn, column, join_posts: bool = False) -> dict:
    views = feed_data.c.action == c.VIEW
    src = feed_data.join(user_data, feed_data.c.user_id == user_data.c.user_id)
    if join_posts:
        src = src.join(post_text_df, feed_data.c.post_id == post_text_df.c.post_id)
    q = select(column, func.avg(feed_data.c.target * 1.0), func.count()).select_from(src).where(views)
    return {str(k): round(float(r), 4) for k, r, _ in conn.execute(q.group_by(column)).all()}

def world_statistics(engine: Engine) -> dict:
    """Counts, profile distributions and like rates per segment (like rate = share of views with target 1)."""
    with engine.connect() as conn:
        n_users = conn.execute(select(func.count()).select_from(user_data)).scalar_one()
        n_posts = conn.execute(select(func.count()).select_from(post_text_df)).scalar_one()
        actions = dict(conn.execute(select(feed_data.c.action, func.count()).group_by(feed_data.c.action)).all())
        t_min, t_max = conn.execute(select(func.min(feed_data.c.timestamp), func.max(feed_data.c.timestamp))).one()
        target_rate, positive = conn.execute(select(func.avg(feed_data.c.target * 1.0), func.sum(feed_data.c.target))
                                             .where(feed_data.c.action == c.VIEW)).one()
        hour = func.extract("hour", feed_data.c.timestamp) if engine.dialect.name == "postgresql" else \
            func.cast(func.strftime("%H", feed_data.c.timestamp), user_data.c.age.type)
        hours = dict(conn.execute(select(hour, func.count()).group_by(hour)).all())
        per_post = select(feed_data.c.post_id, func.count().label("n")).where(
            feed_data.c.action == c.VIEW).group_by(feed_data.c.post_id).subquery()
        views_min, views_max = conn.execute(select(func.min(per_post.c.n), func.max(per_post.c.n))).one()
        per_user = select(feed_data.c.user_id, func.max(feed_data.c.target).label("liked")).where(
            feed_data.c.action == c.VIEW).group_by(feed_data.c.user_id).subquery()
        with_like, active = conn.execute(select(func.sum(per_user.c.liked), func.count())).one()
        ages = sorted(a for (a,) in conn.execute(select(user_data.c.age)).all())
        n_cities = conn.execute(select(func.count(func.distinct(user_data.c.city)))).scalar_one()
        profile = {
            col: dict(conn.execute(select(user_data.c[col], func.count()).group_by(user_data.c[col])).all())
            for col in (c.GENDER, c.COUNTRY, c.OS, c.SOURCE, c.EXP_GROUP)
        }
        top_cities = dict(conn.execute(select(user_data.c.city, func.count().label("n")).group_by(
            user_data.c.city).order_by(func.count().desc()).limit(3)).all())
        rates = {
            c.GENDER: _rate_by(conn, user_data.c.gender),
            c.COUNTRY: _rate_by(conn, user_data.c.country),
            c.EXP_GROUP: _rate_by(conn, user_data.c.exp_group),
            c.TOPIC: _rate_by(conn, post_text_df.c.topic, join_posts=True),
            "hour": {},
        }
        hour_rate = select(hour, func.avg(feed_data.c.target * 1.0)).where(
            feed_data.c.action == c.VIEW).group_by(hour)
        rates["hour"] = {int(h): round(float(r), 4) for h, r in conn.execute(hour_rate).all()}
    q = lambda p: ages[min(len(ages) - 1, int(p * len(ages)))]  # noqa: E731
    return {
        "users": n_users, "posts": n_posts, "feed_rows": sum(actions.values()),
        "views": actions.get(c.VIEW, 0), "likes": actions.get(c.LIKE, 0),
        "first_event": str(t_min), "last_event": str(t_max),
        "target_rate": round(float(target_rate), 4), "positive_views": int(positive),
        "hours_with_events": sorted(int(h) for h in hours),
        "views_per_post": [int(views_min), int(views_max)],
        "users_with_a_liked_view": round(int(with_like) / max(int(active), 1), 4),
        "age_quartiles": [q(0.25), q(0.5), q(0.75)], "age_range": [ages[0], ages[-1]],
        "cities": n_cities, "top_cities": top_cities, "profile": profile, "like_rate": rates,
    }

