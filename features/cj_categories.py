"""The Complete Journey's product hierarchy mapped onto our feature categories (pure; data only).

Shared by the stream replay (``features/replay_cj.py``) and the training evaluation
(``training/completejourney.py``) so that both see a basket's categories the same way.
"""

from __future__ import annotations

import pandas as pd

from features.offers import CATEGORIES

#: Complete Journey department -> our category. Departments not listed map to ``other``.
DEPARTMENTS: dict[str, str] = {
    "GROCERY": "grocery",
    "PRODUCE": "grocery",
    "MEAT": "grocery",
    "MEAT-PCKGD": "grocery",
    "DELI": "grocery",
    "PASTRY": "grocery",
    "SEAFOOD": "grocery",
    "SEAFOOD-PCKGD": "grocery",
    "FROZEN GROCERY": "grocery",
    "SALAD BAR": "grocery",
    "CHEF SHOPPE": "grocery",
    "SPIRITS": "grocery",
    "DRUG GM": "health",
    "NUTRITION": "health",
    "COSMETICS": "beauty",
    "FLORAL": "home",
    "HOUSEWARES": "home",
    "ELECT &PLUMBING": "home",
    "GARDEN CENTER": "outdoor",
    "TRAVEL & LEISURE": "sports",
    "TOYS": "toys",
    "PHOTO & VIDEO": "electronics",
}
#: Product-category keywords that override the department, applied in order (a later match wins).
#: Baby, pet and reading products are filed under grocery or drug/GM by the retailer.
KEYWORDS: tuple[tuple[str, str], ...] = (
    ("BABY", "baby"),
    ("DIAPER", "baby"),
    ("INFANT", "baby"),
    ("CAT ", "pets"),
    ("DOG ", "pets"),
    ("PET ", "pets"),
    ("MAGAZINE", "books"),
    ("BOOK", "books"),
)


def product_categories(products: pd.DataFrame) -> pd.Series:
    """product_id -> our category name."""
    cat = products["department"].map(DEPARTMENTS).fillna("other")
    pc = products["product_category"].fillna("").astype(str).str.upper()
    for word, target in KEYWORDS:
        cat = cat.mask(pc.str.contains(word, regex=False), target)
    assert set(cat.unique()) <= set(CATEGORIES)
    return pd.Series(cat.to_numpy(), index=products["product_id"].to_numpy())
