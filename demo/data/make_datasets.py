"""Write the demo's two small labelled English datasets (written for lorafleet, seed fixed).

- ``sentiment``: short product reviews, labels ``negative`` (0) / ``positive`` (1).
- ``topic``: news headlines, labels ``world`` (0) / ``sports`` (1) / ``business`` (2) /
  ``science`` (3) -- the four classes of the AG News task, but every sentence here is made
  from this file's own templates and vocabulary.

The held-out test split is built from templates *and* slot words that the training split never
uses, plus hand-written sentences in free phrasing (20 per sentiment label, 10 per topic), so
its accuracy measures generalisation, not memorisation. Output: JSON Lines files
``<name>.train.jsonl`` / ``<name>.test.jsonl`` with ``{"text": str, "label": int}`` per line and
``<name>.labels.json`` mapping label id (string) to name, next to this script.

Run: ``python demo/data/make_datasets.py`` (deterministic; the files are checked in).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20260601

# ---------------------------------------------------------------------------------------------
# Sentiment of product reviews.
# Each entry: (train words, test words). Templates: (train templates, test templates).

PRODUCTS = (
    [
        "blender",
        "headphones",
        "backpack",
        "coffee maker",
        "phone case",
        "desk lamp",
        "running shoes",
        "keyboard",
        "vacuum cleaner",
        "water bottle",
        "tent",
        "monitor",
        "kettle",
        "office chair",
        "umbrella",
        "toaster",
        "mattress",
        "jacket",
    ],
    [
        "printer",
        "suitcase",
        "smartwatch",
        "frying pan",
        "hair dryer",
        "bike helmet",
        "speaker",
        "raincoat",
    ],
)
POS_ADJ = (
    [
        "excellent",
        "fantastic",
        "great",
        "wonderful",
        "sturdy",
        "reliable",
        "comfortable",
        "superb",
        "impressive",
        "well made",
    ],
    ["outstanding", "lovely", "solid", "brilliant", "delightful"],
)
NEG_ADJ = (
    [
        "terrible",
        "awful",
        "flimsy",
        "useless",
        "disappointing",
        "cheap",
        "poorly made",
        "horrible",
        "defective",
        "uncomfortable",
    ],
    ["dreadful", "shoddy", "pathetic", "faulty", "worthless"],
)
POS_CLAUSE = (
    [
        "it works perfectly",
        "it exceeded my expectations",
        "I use it every day",
        "it was worth every penny",
        "it arrived early and well packed",
        "my whole family loves it",
        "it still looks new after months",
        "setup took two minutes",
        "the quality is obvious",
        "I would buy it again",
    ],
    [
        "it does exactly what it promises",
        "I have already recommended it to friends",
        "customer service was quick and kind",
        "it feels built to last",
    ],
)
NEG_CLAUSE = (
    [
        "it broke after a week",
        "it stopped working on the second day",
        "it was a waste of money",
        "the seller never answered my emails",
        "it arrived scratched and dented",
        "the battery dies within an hour",
        "it smells of plastic",
        "half the parts were missing",
        "I returned it immediately",
        "it is nothing like the photos",
    ],
    [
        "it fell apart when I opened the box",
        "the refund took two months",
        "it overheats and shuts down",
        "nobody should buy this",
    ],
)
SENT_TEMPLATES = (
    {
        1: [
            "This {product} is {adj}; {clause}.",
            "{Adj} {product}, {clause}.",
            "I love this {product}. {Clause}.",
            "Five stars: the {product} is {adj} and {clause}.",
            "Really happy with the {product}, {clause}.",
            "Best {product} I have owned, {clause}.",
        ],
        0: [
            "This {product} is {adj}; {clause}.",
            "{Adj} {product}, {clause}.",
            "I regret buying this {product}. {Clause}.",
            "One star: the {product} is {adj} and {clause}.",
            "Very unhappy with the {product}, {clause}.",
            "Worst {product} I have owned, {clause}.",
        ],
    },
    {
        1: [
            "Honestly a {adj} {product}; {clause}.",
            "Would recommend this {product} to anyone, {clause}.",
            "So pleased with my new {product}: {clause}.",
        ],
        0: [
            "Honestly a {adj} {product}; {clause}.",
            "Would not recommend this {product} to anyone, {clause}.",
            "So annoyed with my new {product}: {clause}.",
        ],
    },
)

# ---------------------------------------------------------------------------------------------
# Topic of news headlines: world (0), sports (1), business (2), science (3).

TOPIC_SLOTS = {
    0: {  # world
        "who": (
            [
                "The prime minister",
                "Foreign ministers",
                "The president",
                "Rebel leaders",
                "United Nations envoys",
                "Opposition parties",
                "Peace negotiators",
            ],
            ["The chancellor", "Border officials", "Regional governors"],
        ),
        "what": (
            [
                "sign a ceasefire agreement",
                "hold talks on the border dispute",
                "call early elections",
                "condemn the military coup",
                "meet to discuss refugees",
                "announce sanctions against the regime",
                "agree on a humanitarian corridor",
            ],
            [
                "reopen the embassy after years of tension",
                "demand the release of prisoners",
                "promise a vote on independence",
            ],
        ),
        "where": (
            [
                "in Geneva",
                "after weeks of protests",
                "at the summit in Nairobi",
                "as the crisis deepens",
                "in the capital",
                "before the parliament vote",
            ],
            ["at the border crossing", "amid diplomatic row"],
        ),
    },
    1: {  # sports
        "who": (
            [
                "The home team",
                "The defending champions",
                "The national side",
                "The striker",
                "The veteran goalkeeper",
                "The young sprinter",
                "The tennis star",
            ],
            ["The rookie quarterback", "The cycling team", "The captain"],
        ),
        "what": (
            [
                "win the final on penalties",
                "score twice in the second half",
                "break the world record",
                "reach the semifinal",
                "lose the derby",
                "sign a new three-year contract",
                "clinch the league title",
            ],
            [
                "equalise in stoppage time",
                "qualify for the Olympic games",
                "retire after twenty seasons",
            ],
        ),
        "where": (
            [
                "at the stadium",
                "in the cup match",
                "on the final lap",
                "in front of a sold-out crowd",
                "at the championship",
                "in the playoffs",
            ],
            ["at the grand prix", "during the tournament"],
        ),
    },
    2: {  # business
        "who": (
            [
                "Shares of the retailer",
                "The central bank",
                "The carmaker",
                "Oil prices",
                "The airline",
                "Investors",
                "The bank",
            ],
            ["The chipmaker's stock", "The mining company", "Bond yields"],
        ),
        "what": (
            [
                "rise after strong quarterly earnings",
                "raise interest rates again",
                "cut thousands of jobs",
                "fall as inflation worries grow",
                "announce a merger worth billions",
                "report record profits",
                "miss revenue forecasts",
            ],
            [
                "plunge after the profit warning",
                "agree to a takeover bid",
                "file for bankruptcy protection",
            ],
        ),
        "where": (
            [
                "on Wall Street",
                "as markets open",
                "amid weak consumer demand",
                "in early trading",
                "after the earnings call",
                "despite higher costs",
            ],
            ["on the stock exchange", "as the dollar weakens"],
        ),
    },
    3: {  # science
        "who": (
            [
                "Astronomers",
                "Researchers",
                "NASA engineers",
                "Physicists",
                "Biologists",
                "A team of chemists",
                "Climate scientists",
            ],
            ["Geologists", "Neuroscientists", "Software researchers"],
        ),
        "what": (
            [
                "discover a new exoplanet",
                "sequence the genome of an ancient plant",
                "launch a probe to study the sun",
                "build a faster quantum processor",
                "find water ice on the moon",
                "develop a battery that charges in minutes",
                "observe a rare supernova",
            ],
            [
                "map the brain cells of a fruit fly",
                "detect gravitational waves again",
                "train a robot to fold laundry",
            ],
        ),
        "where": (
            [
                "in a new study",
                "using the space telescope",
                "in the laboratory",
                "published in Nature",
                "with a particle accelerator",
                "after years of research",
            ],
            ["at the research station", "in a peer-reviewed paper"],
        ),
    },
}
TOPIC_TEMPLATES = (
    ["{who} {what} {where}", "{who} {what}", "{where}, {who_lc} {what}"],
    ["Report: {who_lc} {what} {where}", "{who} expected to {what}"],
)


# Hand-written held-out sentences in free phrasing (no template, partly no shared vocabulary):
# they keep the test split from being only a re-shuffle of the training templates.
HANDWRITTEN_SENTIMENT = {
    1: [
        "Absolutely love it, my kids fight over who gets to use it.",
        "Shipping was fast and the thing just works, no complaints at all.",
        "Great value for the price, I ended up ordering a second one.",
        "Surprisingly good sound for something this small.",
        "Exactly as described and the instructions were clear.",
        "Comfortable enough to wear all day, which I did not expect.",
        "It replaced two gadgets on my counter and does both jobs better.",
        "Quiet, quick and easy to clean. Happy customer here.",
        "The colour is even nicer in person than in the pictures.",
        "After three months of daily use it still feels like new.",
        "Setup took five minutes and it has not missed a beat since.",
        "My old one lasted ten years; this one feels even sturdier.",
        "Highly recommended, it made my mornings so much easier.",
        "Good battery life and the app is actually pleasant to use.",
        "Perfect gift, my dad has not stopped talking about it.",
        "Keeps drinks cold for hours, exactly what I wanted.",
        "Nice and light, and it folds away neatly in a drawer.",
        "The customer support replaced a missing screw within a day.",
        "Five stars, would happily buy from this brand again.",
        "It looks expensive and performs even better than it looks.",
    ],
    0: [
        "Stopped charging after two weeks and the seller ignored me.",
        "The zipper broke the first time I used it.",
        "Loud, slow and it leaks water all over the counter.",
        "Nothing like the pictures, the material feels like paper.",
        "I want my money back, this was a complete waste.",
        "The screen cracked in my bag even though it was in a case.",
        "Instructions are missing and half the screws do not fit.",
        "It rattles constantly and the noise drives me mad.",
        "Returned it the same day, the smell alone was unbearable.",
        "Way too small, and the sizing chart was completely wrong.",
        "The app crashes every time I try to connect it.",
        "Arrived late, scratched and with a dead battery.",
        "Cheaply made junk that fell apart within a month.",
        "Customer service hung up on me twice, avoid this company.",
        "It burns the toast on every setting, even the lowest.",
        "Uncomfortable straps that dig into my shoulders.",
        "The lid does not close properly so everything spills.",
        "Stopped working right after the warranty ran out.",
        "Misleading listing, it is not waterproof at all.",
        "Terrible purchase, I regret not reading the reviews first.",
    ],
}
HANDWRITTEN_TOPIC = {
    0: [
        "Thousands flee as fighting spreads to the northern provinces",
        "Leaders gather in Brussels to discuss the refugee crisis",
        "Election results disputed after weeks of unrest in the capital",
        "Embassy staff evacuated as tensions rise along the border",
        "New government sworn in after months of coalition talks",
        "UN calls for aid access to the besieged city",
        "Protesters demand the resignation of the interior minister",
        "Treaty signed to end decades of territorial dispute",
        "Earthquake relief convoys reach remote mountain villages",
        "President visits neighbouring country to repair diplomatic ties",
    ],
    1: [
        "Late goal sends underdogs into the cup semifinals",
        "Marathon winner sets a new course record in the rain",
        "Star forward out for the season with a knee injury",
        "Coach sacked after a run of seven straight defeats",
        "Home side clinches the title with two games to spare",
        "Swimmer takes gold in the four hundred metres freestyle",
        "Tennis champion knocked out in the second round",
        "Rugby team announces squad for the autumn internationals",
        "Golfer holes a final putt to win the championship by one shot",
        "Basketball rookie scores forty points in his debut",
    ],
    2: [
        "Retail sales slump as shoppers cut back on spending",
        "Tech giant posts record quarterly revenue",
        "Stocks tumble as investors fear a recession",
        "Airline to cut routes after fuel costs soar",
        "Factory output rises for the third month in a row",
        "Bank raises mortgage rates for new customers",
        "Supermarket chain agrees to buy its smaller rival",
        "Unemployment falls to its lowest level in a decade",
        "Oil company shares jump after a surprise dividend",
        "Start-up raises millions from venture capital investors",
    ],
    3: [
        "Telescope captures the most distant galaxy yet seen",
        "Scientists edit genes to make crops resist drought",
        "Mars rover finds traces of an ancient lake bed",
        "New vaccine shows promise in early clinical trials",
        "Researchers build a chip that mimics the human brain",
        "Fossil discovery sheds light on the first land animals",
        "Engineers test a rocket engine that runs on methane",
        "Study links deep sea microbes to the origin of life",
        "Physicists cool atoms to a billionth of a degree above zero",
        "Satellite data reveals faster melting of polar ice",
    ],
}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentiment(rng: random.Random, split: int, count: int) -> list[dict]:
    rows = []
    for i in range(count):
        label = i % 2
        adjs = POS_ADJ if label else NEG_ADJ
        clauses = POS_CLAUSE if label else NEG_CLAUSE
        template = rng.choice(SENT_TEMPLATES[split][label])
        adj = rng.choice(adjs[split])
        clause = rng.choice(clauses[split])
        text = template.format(
            product=rng.choice(PRODUCTS[split]),
            adj=adj,
            Adj=_cap(adj),
            clause=clause,
            Clause=_cap(clause),
        )
        rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


def _topic(rng: random.Random, split: int, count: int) -> list[dict]:
    rows = []
    for i in range(count):
        label = i % 4
        slots = TOPIC_SLOTS[label]
        who = rng.choice(slots["who"][split])
        what = rng.choice(slots["what"][split])
        where = rng.choice(slots["where"][split])
        template = rng.choice(TOPIC_TEMPLATES[split])
        text = template.format(who=who, who_lc=who[:1].lower() + who[1:], what=what, where=where)
        rows.append({"text": _cap(text), "label": label})
    rng.shuffle(rows)
    return rows


def _handwritten(rng: random.Random, sentences: dict[int, list[str]]) -> list[dict]:
    rows = [{"text": t, "label": label} for label, texts in sentences.items() for t in texts]
    rng.shuffle(rows)
    return rows


def _dedupe(rows: list[dict], exclude: set[str] = frozenset()) -> list[dict]:
    seen = set(exclude)
    out = []
    for row in rows:
        if row["text"] not in seen:
            seen.add(row["text"])
            out.append(row)
    return out


def _write(name: str, train: list[dict], test: list[dict], labels: dict[str, str]) -> None:
    for split, rows in (("train", train), ("test", test)):
        with open(HERE / f"{name}.{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    (HERE / f"{name}.labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    print(f"{name}: {len(train)} train, {len(test)} test examples")


def main() -> None:
    """Generate both datasets into this folder."""
    rng = random.Random(SEED)
    train = _dedupe(_sentiment(rng, 0, 480))
    test = _dedupe(_sentiment(rng, 1, 200), {r["text"] for r in train})
    test += _handwritten(rng, HANDWRITTEN_SENTIMENT)
    _write("sentiment", train, test, {"0": "negative", "1": "positive"})
    train = _dedupe(_topic(rng, 0, 480))
    test = _dedupe(_topic(rng, 1, 200), {r["text"] for r in train})
    test += _handwritten(rng, HANDWRITTEN_TOPIC)
    _write("topic", train, test, {"0": "world", "1": "sports", "2": "business", "3": "science"})


if __name__ == "__main__":
    main()
