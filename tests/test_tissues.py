import pytest

from lumbarseg import tissues


def test_study_labels_name_every_level_and_vertebra_once():
    names = list(tissues.STUDY_LABELS.values())
    assert len(names) == len(set(names))
    for name in (*tissues.DISC_LEVELS, *tissues.VERTEBRAE[:-1]):
        assert name in tissues.STUDY_VALUES
    # every tissue class but background is reachable from a study label
    reached = {tissues.tissue_of(n).name for n in names}
    assert reached == set(tissues.TISSUE_NAMES) - {"background"}


@pytest.mark.parametrize("name, tissue", [("L5-S1", "disc"), ("T11", "vertebral_body"), ("S1", "sacrum"),
                                          ("dural_sac", "dural_sac"), ("hernia", "hernia"),
                                          ("spinal_canal", "dural_sac")])
def test_tissue_of(name, tissue):
    assert tissues.tissue_of(name).name == tissue


def test_a_partial_name_allows_several_classes_and_is_no_single_tissue():
    assert [t.name for t in tissues.classes_of("vertebra")] == list(tissues.PARTIAL["vertebra"])
    assert tissues.parse_structures("1=disc;2=vertebra;3=spinal_canal") == {1: "disc", 2: "vertebra", 3: "spinal_canal"}
    with pytest.raises(KeyError, match="several tissue classes"):
        tissues.tissue_of("vertebra")
    assert min(tissues.PARTIAL_CODES.values()) >= tissues.NUM_TISSUES
    assert max(tissues.PARTIAL_CODES.values()) < tissues.IGNORE


def test_structures_round_trip_and_errors():
    table = {1: "L5-S1", 2: "L4-L5", 7: "vertebral_body"}
    assert tissues.parse_structures(tissues.format_structures(table)) == table
    with pytest.raises(ValueError, match="unknown structure"):
        tissues.parse_structures("1=L6-S1")
    with pytest.raises(ValueError, match="value=name"):
        tissues.parse_structures("disc")


def test_study_label_values_are_contiguous_for_viewer_label_lists():
    # OHIF's MONAI Label panel numbers an app's label list from 1: value i+1 is list entry i
    assert list(tissues.STUDY_LABELS) == list(range(1, len(tissues.STUDY_LABELS) + 1))
