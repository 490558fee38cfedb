"""Channel selection never fails and keeps each slot's meaning where it can."""

from itertools import combinations

import pytest

from lumbarseg.modalities import MODALITIES, normalize, select_channels


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_every_combination_of_contrasts_gives_three_valid_channels(count):
    for names in combinations(MODALITIES, count):
        chosen = select_channels(names)
        assert len(chosen) == 3 and all(0 <= c < count for c in chosen), names
        assert len(set(chosen)) == min(3, count), names  # no channel repeated while others are unused


def test_slots_prefer_fluid_then_fat_bright_contrasts():
    assert select_channels(("t1w", "t2w")) == [1, 0, 1]
    assert select_channels(("dixon_fat", "dixon_in", "dixon_opp")) == [1, 0, 2]
    assert select_channels(("t1w", "dixon_opp")) == [0, 0, 1]  # nothing fluid-bright: still three
    assert select_channels(("flair",)) == [0, 0, 0]
    assert normalize("inn") == "dixon_in" and normalize("T2") == "t2w"
    with pytest.raises(ValueError):
        select_channels(())
