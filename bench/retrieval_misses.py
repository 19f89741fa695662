"""Why retrieval misses a model's favourites (the diagnosis behind the blend source, docs/catalogue.md).

    python -m bench.retrieval_misses ranks DB_URL MODELS N [MODEL] [OUT.csv]   # per missed post, its rank per source
    python -m bench.retrieval_misses blend DB_URL MODELS N                     # does proxy + w.sims rank them high?
    python -m bench.retrieval_misses sweep DB_URL MODELS N [WEIGHTS_JSON|-]    # recall and size per source budget
    python -m bench.retrieval_misses cost MODELS_A MODELS_B N                  # two artifacts, requests alternating

`ranks`: for each of full scoring's top 5 at N held-out requests, whether the candidates hold it, and its
rank inside its topic by the proxy, by each taste vector and by the model itself. `blend`: least-squares
weights of (proxy, the four similarities) for the full-catalogue scores of 150 other requests, then the
rank of the top 5 inside their topic under that blend, against the proxy's and the TF-IDF taste's.
Scratch measurements: they print, they do not write docs.
"""
# ruff: noqa
import sys



def ranks(argv):
    sys.argv = [''] + argv
    import numpy as np, pandas as pd
    from threadpoolctl import threadpool_limits
    threadpool_limits(1, "blas")
    from app import columns as c
    from app.db import make_engine
    from app.engine import Recommender, ScreenPolicy
    from app.follower import catch_up
    from app.candidates import _nth
    from bench.catalogue import _requests
    from app.features import finalize_posts

    db_url, models, n_req = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = sys.argv[4] if len(sys.argv) > 4 else "test"
    full = Recommender.load(models, policy=ScreenPolicy(retrieval="full"))
    cand = Recommender.load(models, policy=ScreenPolicy(retrieval="candidates"))
    db = make_engine(db_url)
    for e in (full, cand): catch_up(db, e.state)
    print("objective", full.objective, "floor", full.floor)
    reqs = _requests(db_url, full, n_req, 0)
    R = cand.retriever; b = R.budget
    rows_out = []
    def rank_in(vals, sel, row):
        # rank (0-based) of row among sel by vals desc
        v = vals[sel]; return int((v > vals[row]).sum())
    for u, t in zip(reqs[c.USER_ID].to_numpy(), reqs["ts"].to_numpy()):
        u, t = int(u), int(t)
        user, posts = cand.state.at(cand.state.user_row(u), t)
        if user is None: continue
        top = full.recommend(model, u, t, 5).post_ids
        rows_top = cand.state.post_rows(top)
        cands = set(cand.candidates(model, user, t, len(posts.topic)).tolist())
        fav = R.favourite_topics(user.view)
        fav_rank = {int(tp): i for i, tp in enumerate(fav)}
        n = len(posts.topic)
        scores = cand.model_scores(model, user, posts, t)
        elig = cand.eligible(np.arange(n), user, t, n)
        hourly = R._hour(model, t, cand.state.timeline)
        now = cand.state.timeline.counts_at((t//3600)*3600)[:n]
        pscore = R.proxies[model].score(posts.static, finalize_posts(now, R.priors), posts.text)
        uv = user.view
        for r in rows_top:
            r = int(r); tp = int(posts.topic[r]); sel = np.flatnonzero((posts.topic == tp))
            vec = posts.vec; tv = posts.tfidf_vec
            d = {"user": u, "t": t, "row": r, "hit": r in cands, "topic": tp, "fav_rank": fav_rank[tp],
                 "score_rank_topic_elig": int((scores[sel][elig[sel]] > scores[r]).sum()),
                 "proxy_rank": rank_in(pscore, sel, r),
                 "nn_topic_rank": rank_in(vec @ uv.topic_vec[0, tp], sel, r),
                 "nn_all_rank": rank_in(vec @ uv.vec[0], sel, r),
                 "nn_contrast_rank": rank_in(vec @ uv.contrast[0], sel, r),
                 "nn_tfidf_rank": rank_in(tv @ uv.topic_tfidf[0, tp], sel, r),
                 "topic_vec_zero": not np.any(uv.topic_vec[0, tp]),
                 "u_views": float(uv.num[0, 8]), "p_views": int(now[r, 0]), "born": int(cand.state.catalogue.frame.born[r]),
                 "budget_topic": _nth(b.taste_topic, fav_rank[tp]), "budget_all": _nth(b.taste_all, fav_rank[tp]),
                 "budget_tfidf": _nth(b.taste_tfidf, fav_rank[tp]), "budget_proxy": max(_nth(b.proxy_topic, fav_rank[tp]), b.proxy_every)}
            rows_out.append(d)
    df = pd.DataFrame(rows_out)
    df.to_csv(sys.argv[5] if len(sys.argv) > 5 else "/work/bench-data/catalogue/diag.csv", index=False)
    print("recall", df.hit.mean(), "n", len(df))
    m = df[~df.hit]
    pd.set_option("display.width", 250); pd.set_option("display.max_columns", 30)
    print(m.describe().T[["mean", "25%", "50%", "75%"]])
    print("misses by fav_rank"); print(m.fav_rank.value_counts().sort_index())
    print("all by fav_rank"); print(df.fav_rank.value_counts().sort_index())


def blend(argv):
    sys.argv = [''] + argv
    import numpy as np, pandas as pd
    from threadpoolctl import threadpool_limits
    threadpool_limits(1, "blas")
    from app import columns as c
    from app.db import make_engine
    from app.engine import Recommender, ScreenPolicy
    from app.follower import catch_up
    from app.features import finalize_posts, assemble, feature_names
    from bench.catalogue import _requests

    db_url, models, n_req = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = "test"
    cand = Recommender.load(models, policy=ScreenPolicy(retrieval="candidates"))
    db = make_engine(db_url); catch_up(db, cand.state)
    R = cand.retriever
    names = feature_names(True); si = [names.index(k) for k in ("sim_liked", "sim_contrast", "sim_liked_topic", "sim_tfidf_topic")]
    print("vec", cand.state.catalogue.frame.posts.vec.shape, "tfidf", cand.state.catalogue.frame.posts.tfidf_vec.shape)
    def request_data(seed, n):
        reqs = _requests(db_url, cand, n, seed)
        out = []
        for u, t in zip(reqs[c.USER_ID].to_numpy(), reqs["ts"].to_numpy()):
            u, t = int(u), int(t)
            user, posts = cand.state.at(cand.state.user_row(u), t)
            if user is None: continue
            N = len(posts.topic)
            x = assemble(user.view, np.int64(0), posts, None, np.int64(t), text=True)
            s = cand.models[model].predict(x, prediction_type="RawFormulaVal", thread_count=1)
            now = cand.state.timeline.counts_at((t // 3600) * 3600)[:N]
            p = R.proxies[model].score(posts.static, finalize_posts(now, R.priors), posts.text)
            elig = cand.eligible(np.arange(N), user, t, N)
            out.append(dict(s=s, p=p, sims=x[:, si].astype(np.float64), topic=posts.topic.copy(), elig=elig,
                            fav=R.favourite_topics(user.view)))
        return out
    def centre(a, topic):
        a = np.asarray(a, float).copy()
        for k in np.unique(topic):
            m = topic == k; a[m] -= a[m].mean(axis=0)
        return a
    fit = request_data(1, 150)
    X = np.concatenate([centre(np.column_stack([d["p"], d["sims"]]), d["topic"]) for d in fit])
    y = np.concatenate([centre(d["s"], d["topic"]) for d in fit])
    w, *_ = np.linalg.lstsq(X, y, rcond=None)
    r2 = 1 - ((y - X @ w) ** 2).sum() / (y ** 2).sum()
    r2p = 1 - ((y - X[:, :1] @ np.linalg.lstsq(X[:, :1], y, rcond=None)[0]) ** 2).sum() / (y ** 2).sum()
    print("weights proxy, sim_liked, sim_contrast, sim_topic, sim_tfidf:", np.round(w, 3), "R2", round(r2, 3), "proxy alone", round(r2p, 3))
    ev = request_data(0, 300)
    rows = []
    for d in ev:
        s = np.where(d["elig"], d["s"], -np.inf)
        top = np.argsort(-s)[:5]
        combo = d["p"] * w[0] + d["sims"] @ w[1:]
        fav_rank = {int(k): i for i, k in enumerate(d["fav"])}
        for r in top:
            sel = np.flatnonzero((d["topic"] == d["topic"][r]) & d["elig"])
            rows.append(dict(fav_rank=fav_rank[int(d["topic"][r])], combo_rank=int((combo[sel] > combo[r]).sum()),
                             proxy_rank=int((d["p"][sel] > d["p"][r]).sum()),
                             tfidf_rank=int((d["sims"][sel, 3] > d["sims"][r, 3]).sum())))
    df = pd.DataFrame(rows)
    for col in ("combo_rank", "proxy_rank", "tfidf_rank"):
        print(col, "quantiles", df[col].quantile([.5, .9, .95, .98, .99, 1]).round(0).tolist())
    print(df.groupby("fav_rank").combo_rank.describe(percentiles=[.5, .9, .95, .99]).round(0))
    for k in (20, 50, 100, 200):
        print("combo top", k, "per topic catches", (df.combo_rank < k).mean().round(4))


def sweep(argv):
    sys.argv = [''] + argv
    import json, time, dataclasses
    import numpy as np, pandas as pd
    from threadpoolctl import threadpool_limits
    threadpool_limits(1, "blas")
    from app import columns as c
    from app.db import make_engine
    from app.engine import Recommender, ScreenPolicy
    from app.follower import catch_up
    from app.candidates import Budget, BLEND_TERMS
    from bench.catalogue import _requests

    db_url, models, n_req = sys.argv[1], sys.argv[2], int(sys.argv[3])
    weights = json.loads(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "-" else None
    full = Recommender.load(models, policy=ScreenPolicy(retrieval="full"))
    cand = Recommender.load(models, policy=ScreenPolicy(retrieval="candidates"))
    db = make_engine(db_url)
    for e in (full, cand): catch_up(db, e.state)
    R = cand.retriever
    if weights is not None:
        R.proxies["test"].blend = np.array(weights, np.float32)
    print("blend", R.proxies["test"].blend)
    reqs = _requests(db_url, full, n_req, 0)
    tops = {}
    for u, t in zip(reqs[c.USER_ID].to_numpy(), reqs["ts"].to_numpy()):
        for m in ("control", "test"):
            tops[(int(u), int(t), m)] = full.recommend(m, int(u), int(t), 5).post_ids
    B0 = Budget()
    from app.candidates import NO_BLEND
    configs = {
        "before": NO_BLEND,
        "blend added": dataclasses.replace(NO_BLEND, blend=(100, 60, 40, 30, 20, 20, 20)),
        "default": B0,
        "B": dataclasses.replace(B0, blend=(250, 150, 100, 60, 40, 40, 40), taste_topic=(20, 10, 10, 5, 5, 5, 5),
                                 taste_all=(10, 5, 5, 5), taste_tfidf=(20, 10, 10, 10, 5, 5, 5), proxy_topic=(150, 60, 30)),
        "C": dataclasses.replace(B0, blend=(300, 180, 120, 80, 60, 50, 50), taste_topic=(0,), taste_all=(0,),
                                 taste_tfidf=(0,), proxy_topic=(150, 60, 30)),
    }
    for name, budget in configs.items():
        R.budget = budget; R._hourly = {}
        res = {"control": [], "test": []}; sizes = {"control": [], "test": []}; ms = []
        for (u, t, m), top in tops.items():
            user, posts = cand.state.at(cand.state.user_row(u), t)
            if user is None: continue
            s = time.perf_counter()
            rows = cand.candidates(m, user, t, len(posts.topic))
            ms.append((time.perf_counter() - s) * 1000)
            ids = set(cand.post_ids[rows].tolist())
            res[m].append(len(set(top.tolist()) & ids) / max(len(top), 1)); sizes[m].append(len(rows))
        print(f"{name:12s} " + "  ".join(f"{m}: recall {np.mean(res[m]):.4f} cand {np.median(sizes[m]):.0f}" for m in res)
              + f"  retrieval ms p50 {np.median(ms):.2f}", flush=True)


def cost(argv):
    sys.argv = [''] + argv
    import time
    import numpy as np
    from threadpoolctl import threadpool_limits
    threadpool_limits(1, "blas")
    from app.engine import Recommender, ScreenPolicy
    a, b, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    engines = {"before": Recommender.load(a, policy=ScreenPolicy()), "after": Recommender.load(b, policy=ScreenPolicy())}
    st = engines["before"].state
    users = np.random.default_rng(1).choice(st.snapshot.user_ids, size=n)
    t = st.latest_event + 60
    res = {k: {"cand": [], "total": []} for k in engines}
    for u in users[:10]:
        for e in engines.values(): e.recommend("test", int(u), t, 5)
    for u in users:
        for k, e in engines.items():
            user, posts = e.state.at(e.state.user_row(int(u)), t)
            s = time.perf_counter(); e.candidates("test", user, t, len(posts.topic)); m = time.perf_counter()
            e.recommend("test", int(u), t, 5); f = time.perf_counter()
            res[k]["cand"].append((m - s) * 1000); res[k]["total"].append((f - m) * 1000)
    for k, r in res.items():
        print(k, "retrieval p50 %.2f ms, recommend p50 %.2f ms p90 %.2f" % (np.median(r["cand"]), np.median(r["total"]), np.quantile(r["total"], .9)))


if __name__ == "__main__":
    {"ranks": ranks, "blend": blend, "sweep": sweep, "cost": cost}[sys.argv[1]](sys.argv[2:])
