"""Per model slot, serve what validates best on the protocol that fits the log — or popularity.

For each slot (control, test) the candidates are the P(like | shown) model, the "liked within the next
horizon" model (`training.horizon`) and popularity; for users with no history, the slot's chosen model
seeing the profile alone, popularity within the user's segment (`app.segment_popularity`) and popularity.
They are compared on requests sampled from the validation window, as the evaluation samples held-out ones:

- shown set (random exposure): rank the posts shown to the user in [t, t + 24 h); a hit is a liked one
  in the top 5 (requests with a liked candidate and more than 5 candidates);
- full catalogue (organic exposure): rank every post not liked before t nor viewed in the 72 hours
  before it; a hit is a top-5 post the user likes after t within the validation window.

A model serves a slot only if it beats popularity there (the floor); otherwise the slot serves popularity
and the manifest says why. Ties go to the simpler ranker (popularity, then P(like | shown)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from app.features import CONTROL_FEATURES, PostView, Priors, assemble
from app.segment_popularity import segment_of, segment_scores, segment_shares
from app.user_state import LIKE, VIEW
from training.features import History, post_counters_at, user_views_at
from training.horizon import recent_columns

LIKE_GIVEN_SHOWN = "like_given_shown"
LIKED_WITHIN_HORIZON = "liked_within_horizon"
POPULAR = "popular"
SEGMENT_POPULAR = "segment_popular"
MODEL_OBJECTIVE = "model"  # for cold users: the slot's chosen model on the profile alone
K = 5
SHOWN_WINDOW = 24 * 3600
EXCLUDE_VIEWED = 72 * 3600


@dataclass
class Protocol:
    name: str  # "shown_set" or "full_catalogue"
    requests: pd.DataFrame  # user_row, user_id, ts
    end: int  # likes count up to here (full catalogue)


def protocol_for(kind: str) -> str:
    return "full_catalogue" if kind == "organic" else "shown_set"


def _user_events(history: History, row: int):
    ev = history.events
    lo, hi = ev.indptr[row], ev.indptr[row + 1]
    return ev.ts[lo:hi], ev.post[lo:hi], ev.kind[lo:hi], ev.target[lo:hi]


def request_truth(history: History, protocol: Protocol) -> list[tuple[np.ndarray, set, np.ndarray]]:
    """Per request: (candidate post rows, liked post rows that count as hits, post rows to exclude)."""
    out = []
    for row, t in zip(protocol.requests["user_row"].to_numpy(), protocol.requests["ts"].to_numpy(np.int64),
                      strict=True):
        ts, post, kind, target = _user_events(history, int(row))
        liked_before = post[(kind == LIKE) & (ts < t)]
        if protocol.name == "shown_set":
            m = (kind == VIEW) & (ts >= t) & (ts < t + SHOWN_WINDOW)
            cand = np.unique(post[m]).astype(np.int64)
            liked = set(post[m & (target == 1)].tolist())
            out.append((cand, liked, np.empty(0, np.int64)))
        else:
            liked = set(post[(kind == LIKE) & (ts > t) & (ts < protocol.end)].tolist()) - set(liked_before.tolist())
            recent = post[(kind == VIEW) & (ts < t) & (ts >= t - EXCLUDE_VIEWED)]
            out.append((np.empty(0, np.int64), liked, np.unique(np.r_[liked_before, recent]).astype(np.int64)))
    return out


def eligible(protocol: Protocol, truth) -> np.ndarray:
    if protocol.name == "shown_set":
        return np.array([len(cand) > K and len(liked) > 0 for cand, liked, _ in truth], bool)
    return np.ones(len(truth), bool)


Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray, bool], np.ndarray]
# (user rows, moments, post rows per request as a (n, m) matrix, cold) -> (n, m) scores


def make_scorers(history: History, profile: np.ndarray, posts: PostView, priors: Priors, models: dict,
                 shares: np.ndarray) -> dict[str, Scorer]:
    """Scorers of every candidate ranker over the same feature rows (built once per batch of requests)."""
    index = history.view_index

    def popular(rows, times, post_rows, cold):
        flat_t = np.repeat(times, post_rows.shape[1])
        return index.counts(post_rows.ravel(), flat_t)[:, 1].reshape(post_rows.shape) * 1.0

    def segment(rows, times, post_rows, cold):
        seg = segment_of(profile[rows])
        pop = popular(rows, times, post_rows, cold)
        return np.stack([segment_scores(pop[i], shares[:, post_rows[i]], seg[i]) for i in range(len(rows))])

    cache: dict = {}

    def matrix(rows, times, post_rows, cold):
        """The shared features of every (request, post) pair: the user side once per request (as of its
        moment, or the profile alone when cold), the posts as of each moment, through `assemble`."""
        key = (id(post_rows), cold)
        if key not in cache:
            cache.clear()
            m = post_rows.shape[1]
            view = user_views_at(history, profile, posts, priors, rows, times, np.full(len(rows), cold))
            flat_posts, flat_t = post_rows.ravel(), np.repeat(times, m)
            counters = post_counters_at(history, priors, flat_posts, flat_t)
            x = assemble(view, np.repeat(np.arange(len(rows)), m), posts, flat_posts, flat_t, True,
                         counters=counters)
            cache[key] = (x, recent_columns(history, flat_posts, flat_t))
        return cache[key]

    def model_scorer(name: str, objective: str, text: bool):
        model = models[(name, objective)]

        def score(rows, times, post_rows, cold):
            x, recent = matrix(rows, times, post_rows, cold)
            x = x if text else x[:, :len(CONTROL_FEATURES)]
            if objective == LIKED_WITHIN_HORIZON:
                x = np.column_stack([x, recent])
            return model.predict(x, prediction_type="RawFormulaVal").reshape(post_rows.shape)
        return score

    out: dict[str, Scorer] = {POPULAR: popular, SEGMENT_POPULAR: segment}
    for (name, objective) in models:
        out[f"{name}:{objective}"] = model_scorer(name, objective, text=name == "test")
    return out


def hits(protocol: Protocol, truth, scorers: dict[str, Scorer], names: list[str], cold: bool, n_posts: int,
         batch: int = 8) -> dict[str, np.ndarray]:
    """hit@5 per eligible request for each named scorer."""
    req = protocol.requests
    ok = np.flatnonzero(eligible(protocol, truth))
    out: dict[str, list] = {n: [] for n in names}
    for lo in range(0, len(ok), batch):
        idx = ok[lo:lo + batch]
        rows = req["user_row"].to_numpy(np.int64)[idx]
        times = req["ts"].to_numpy(np.int64)[idx]
        if protocol.name == "shown_set":  # candidate lists differ in length: pad with the first, then cut
            width = max(len(truth[i][0]) for i in idx)
            post_rows = np.stack([np.r_[truth[i][0], np.full(width - len(truth[i][0]), truth[i][0][0])]
                                  for i in idx]).astype(np.int64)
            for n in names:
                s = scorers[n](rows, times, post_rows, cold)
                for j, i in enumerate(idx):
                    cand = truth[i][0]
                    order = cand[np.lexsort((cand, -s[j, :len(cand)]))]
                    out[n].append(float(bool(set(order[:K].tolist()) & truth[i][1])))
            continue
        post_rows = np.tile(np.arange(n_posts, dtype=np.int64), (len(idx), 1))
        for n in names:
            s = scorers[n](rows, times, post_rows, cold)
            for j, i in enumerate(idx):
                sj = s[j].astype(np.float64)
                sj[truth[i][2]] = -np.inf
                top = np.lexsort((np.arange(n_posts), -sj))[:K]
                out[n].append(float(bool(set(top.tolist()) & truth[i][1])))
    return {n: np.array(v) for n, v in out.items()}


def choose(metric: dict[str, float], order: list[str]) -> str:
    """The best by metric; ties go to the earlier name in `order` (the simpler ranker)."""
    best = order[0]
    for name in order[1:]:
        if metric[name] > metric[best] + 1e-12:
            best = name
    return best


def select(history: History, profile: np.ndarray, posts: PostView, priors: Priors, models: dict,
           protocol: Protocol, shares_cut: int) -> dict:
    """The manifest's "selection": per slot what serves users with history and users without, with the
    validation figures each choice rests on."""
    ev = history.events
    owner = np.repeat(np.arange(len(history.user_ids)), np.diff(ev.indptr))
    liked = (ev.kind == LIKE) & (ev.ts < shares_cut)
    shares = segment_shares(segment_of(profile[owner[liked]]), ev.post[liked], len(history.post_ids))
    scorers = make_scorers(history, profile, posts, priors, models, shares)
    truth = request_truth(history, protocol)
    slots = sorted({name for name, _ in models})
    warm_names = [POPULAR] + [f"{s}:{o}" for s in slots for o in (LIKE_GIVEN_SHOWN, LIKED_WITHIN_HORIZON)
                              if (s, o) in models]
    warm = hits(protocol, truth, scorers, warm_names, False, len(history.post_ids))
    cold = hits(protocol, truth, scorers, [POPULAR, SEGMENT_POPULAR, *warm_names[1:]], True, len(history.post_ids))
    mean = {n: round(float(v.mean()), 4) if len(v) else 0.0 for n, v in warm.items()}
    cold_mean = {n: round(float(v.mean()), 4) if len(v) else 0.0 for n, v in cold.items()}
    out = {"protocol": protocol.name, "requests": int(len(next(iter(warm.values())))), "slots": {}}
    for s in slots:
        options = [POPULAR] + [f"{s}:{o}" for o in (LIKE_GIVEN_SHOWN, LIKED_WITHIN_HORIZON) if (s, o) in models]
        best = choose(mean, options)
        serves = POPULAR if best == POPULAR else best.split(":")[1]
        model_figure = max(mean[o] for o in options[1:])
        reason = (f"no model beat popularity on validation ({protocol.name} hitrate@5: best model "
                  f"{model_figure} vs popularity {mean[POPULAR]})" if serves == POPULAR else
                  f"best on validation ({protocol.name} hitrate@5 {mean[best]} vs popularity {mean[POPULAR]})")
        cold_options = [POPULAR, SEGMENT_POPULAR] + ([best] if best != POPULAR else [])
        cold_best = choose(cold_mean, cold_options)
        out["slots"][s] = {
            "serves": serves, "reason": reason,
            "validation_hitrate@5": {o: mean[o] for o in options},
            "cold": {"serves": MODEL_OBJECTIVE if cold_best == best else cold_best,
                     "validation_hitrate@5": {o: cold_mean[o] for o in cold_options}},
        }
    return out

