"""Cities per country with the skew of the course data: a few real big cities, a long tail.

The table is fixed (its own seed) so every world uses the same names.
"""

from functools import lru_cache

import numpy as np

# country -> (number of cities, [(real city, share of the country's users)])
_CITIES = {
    "Russia": (3400, [("Moscow", 21_874 / 143_035), ("Saint Petersburg", 6_904 / 143_035),
                      ("Novosibirsk", 1_987 / 143_035), ("Yekaterinburg", 0.012), ("Kazan", 0.011),
                      ("Nizhniy Novgorod", 0.010), ("Chelyabinsk", 0.009), ("Samara", 0.009),
                      ("Omsk", 0.008), ("Rostov", 0.008), ("Ufa", 0.008), ("Krasnoyarsk", 0.008),
                      ("Voronezh", 0.007), ("Perm", 0.007), ("Volgograd", 0.007)]),
    "Ukraine": (180, [("Kyiv", 0.25), ("Kharkiv", 0.08), ("Odesa", 0.07), ("Dnipro", 0.06)]),
    "Belarus": (80, [("Minsk", 0.45), ("Gomel", 0.07), ("Mogilev", 0.05)]),
    "Kazakhstan": (80, [("Almaty", 0.3), ("Nur-Sultan", 0.15), ("Shymkent", 0.06)]),
    "Turkey": (50, [("Istanbul", 0.35), ("Ankara", 0.12), ("Izmir", 0.08)]),
    "Finland": (40, [("Helsinki", 0.35), ("Espoo", 0.08), ("Tampere", 0.07)]),
    "Azerbaijan": (40, [("Baku", 0.5), ("Ganja", 0.07)]),
    "Estonia": (15, [("Tallinn", 0.45), ("Tartu", 0.15)]),
    "Latvia": (15, [("Riga", 0.5), ("Daugavpils", 0.08)]),
    "Cyprus": (8, [("Limassol", 0.35), ("Nicosia", 0.3)]),
    "Switzerland": (12, [("Zurich", 0.3), ("Geneva", 0.2)]),
}
_PREFIXES = ["Krasno", "Novo", "Staro", "Belo", "Zeleno", "Verkhne", "Nizhne", "Sosno", "Pervo", "Kamen",
             "Solne", "Yasno", "Lesno", "Ozero", "Zlato", "Bori", "Gorno", "Svetlo", "Tikho", "Dubro"]
_ROOTS = ["gorsk", "yarsk", "dar", "volzhsk", "uralsk", "borsk", "pol", "grad", "sk", "ovka", "ino",
          "evo", "kamsk", "lensk", "donsk", "morsk", "reche", "polye", "dolsk", "vodsk"]


@lru_cache
def city_table() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """country -> (city names, probabilities); named cities keep their shares, the tail is Zipf."""
    rng = np.random.default_rng(20211001)
    used: set[str] = set()
    out = {}
    for country, (n_cities, named) in _CITIES.items():
        names = [name for name, _ in named]
        used.update(names)
        while len(names) < n_cities:
            name = rng.choice(_PREFIXES) + rng.choice(_ROOTS)
            name = name if name not in used else f"{name}-{len(names)}"
            used.add(name)
            names.append(name)
        tail = 1.0 / np.arange(1, n_cities - len(named) + 1) ** 0.5
        shares = np.concatenate([[s for _, s in named], tail / tail.sum() * (1 - sum(s for _, s in named))])
        out[country] = (np.array(names, dtype=object), shares / shares.sum())
    return out
