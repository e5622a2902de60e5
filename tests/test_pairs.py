import pytest

from sfmfeat.errors import InputError
from sfmfeat.pairs import exhaustive, read_pairs, sequential, unique_pairs, write_pairs


def test_exhaustive_counts():
    names = [f"{i}.jpg" for i in range(6)]
    assert len(exhaustive(names)) == 15
    assert len(exhaustive(names[:2], names[2:])) == 8


def test_sequential_window_quadratic_and_loops():
    names = [f"{i:03d}.jpg" for i in range(40)]
    plain = sequential(names, window=3, quadratic_overlap=False)
    assert ("000.jpg", "003.jpg") in plain and ("000.jpg", "004.jpg") not in plain
    assert len(plain) == 3 * 37 + 2 + 1
    quadratic = sequential(names, window=3)
    assert ("000.jpg", "004.jpg") in quadratic and ("000.jpg", "032.jpg") in quadratic
    assert ("000.jpg", "005.jpg") not in quadratic
    looped = sequential(names, window=3, quadratic_overlap=False, loop_closure_every=10)
    assert ("000.jpg", "030.jpg") in looped
    with pytest.raises(InputError):
        sequential(names, window=0)


def test_unique_pairs_is_order_invariant():
    assert unique_pairs([("a", "b"), ("b", "a"), ("a", "a"), ("a", "c")]) == [("a", "b"),
                                                                             ("a", "c")]


def test_pairs_file_round_trip_with_spaces(tmp_path):
    pairs = [("dir/a b.jpg", "é.jpg"), ("x.jpg", "it's.jpg")]
    path = tmp_path / "pairs.txt"
    write_pairs(path, pairs)
    assert read_pairs(path) == pairs


def test_malformed_pairs_file_names_the_line(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("a.jpg b.jpg\nlonely.jpg\n")
    with pytest.raises(InputError, match=r"pairs.txt:2"):
        read_pairs(path)
    with pytest.raises(InputError, match="does not exist"):
        read_pairs(tmp_path / "none.txt")


def test_each_extractor_brings_its_authors_matcher():
    from sfmfeat.extractors import default_matcher

    assert default_matcher("sift") == "mnn-ratio"
    assert default_matcher("d2net-ss") == "mnn" and default_matcher("r2d2") == "mnn"
    assert default_matcher("deepdesc") == "mnn"
    assert default_matcher("caps+d2net-ss") == "mnn-ratio"  # the describer decides
    assert default_matcher("contextdesc++") == "mnn-ratio"
    assert default_matcher("disk") == "mnn" and default_matcher("aliked-n32") == "mnn"
