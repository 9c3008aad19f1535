import numpy as np

from recsys.models.text_index import TextIndex

TITLES = np.array(["red cotton shirt", "blue cotton shirt", "red leather boots", "green garden hose"])
CATS = np.array(["tops", "tops", "shoes", "garden"])


def test_search_ranks_the_matching_titles_first():
    idx = TextIndex.fit(TITLES, CATS)
    items, scores = idx.search("red shirt", 3)
    assert items[0] == 0  # both words match
    assert set(items[1:]) == {1, 2}  # one word each
    assert np.all(np.diff(scores) <= 0)
    assert len(idx.search("zebra", 3)[0]) == 0  # no shared term -> nothing


def test_similar_and_profile():
    idx = TextIndex.fit(TITLES, CATS)
    items, _ = idx.similar(0, 2)
    assert items[0] == 1 and 0 not in items
    prof = idx.profile_scores(np.array([3]), np.array([1.0]))
    assert np.argmax(prof) == 3 and prof[0] == 0
