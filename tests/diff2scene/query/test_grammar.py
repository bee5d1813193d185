from __future__ import annotations

import pytest

from diff2scene.errors import InputError
from diff2scene.query.grammar import ParsedQuery, parse_query


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("chair", ParsedQuery("chair")),
        ("  The White  Sneakers. ", ParsedQuery("white sneakers")),
        ("lamp on the table", ParsedQuery("lamp", "on", "table")),
        ("a book on top of the shelf", ParsedQuery("book", "on", "shelf")),
        ("chair next to the table", ParsedQuery("chair", "next_to", "table")),
        ("mug beside a laptop", ParsedQuery("mug", "next_to", "laptop")),
        ("box near the door", ParsedQuery("box", "near", "door")),
        ("box close to the door", ParsedQuery("box", "near", "door")),
        ("shoes under the bed", ParsedQuery("shoes", "under", "bed")),
        ("picture above the sofa", ParsedQuery("picture", "above", "sofa")),
        ("plant to the left of the tv", ParsedQuery("plant", "left_of", "tv")),
        ("plant right of the tv", ParsedQuery("plant", "right_of", "tv")),
        ("the chair closest to the window", ParsedQuery("chair", "closest_to", "window")),
        ("the chair nearest the window", ParsedQuery("chair", "closest_to", "window")),
        ("dark-brown chair", ParsedQuery("dark-brown chair")),
    ],
)
def test_valid_queries(text: str, want: ParsedQuery) -> None:
    assert parse_query(text) == want


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty query"),
        ("   \t ", "control characters|empty query"),
        ("?!.,", "no words"),
        ("1234", "no words"),
        ("the", "no noun phrase"),
        ("chair behind the table", "unsupported spatial relation"),
        ("cup in front of the laptop", "unsupported spatial relation"),
        ("lamp between the beds", "unsupported spatial relation"),
        ("lamp on the table near the bed", "only one spatial relation"),
        ("on the table", "needs a phrase before and after"),
        ("chair next to", "needs a phrase before and after"),
        ("chair; DROP TABLE", "unsupported characters"),
        ("chair\x00", "control characters"),
        ("chair " * 100, "too long"),
    ],
)
def test_malformed_queries_raise(text: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        parse_query(text)


def test_non_string_query_raises() -> None:
    with pytest.raises(InputError, match="must be a string"):
        parse_query(42)
