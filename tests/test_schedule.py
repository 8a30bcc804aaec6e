import json

import pytest

from detailflow_hf.models.schedule import ResolutionSchedule


def tiny() -> ResolutionSchedule:
    return ResolutionSchedule(64, 32, 4, 4, 1.5, 8, 8)


def test_tables_match_fixture_exactly(fixture_dir):
    expected = json.loads((fixture_dir / "tables.json").read_text())
    ours = json.loads(json.dumps(tiny().tables()))  # int keys -> str keys, as the fixture
    for name, table in ours.items():
        assert table == expected[name], name


def test_detailflow16_table():
    s = ResolutionSchedule(256, 128, 8, 8, 1.5, 16, 16)
    ts = [1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128]
    res = [1, 4, 6, 9, 12, 15, 18, 21, 44, 67, 88, 108, 128, 147, 164, 181, 196, 210, 223, 235, 244, 251, 256]
    dec = [16, 16, 16, 16, 16, 16, 32, 32, 48, 80, 96, 112, 128, 160, 176, 192, 208, 224, 224, 240, 256, 256, 256]
    assert list(s.token_list) == ts
    assert [s.resolution(t) for t in ts] == res
    assert [s.decoder_resolution(t) for t in ts] == dec
    assert s.decres2besttoken[256] == 128


@pytest.mark.parametrize(
    "n, checks",
    [(256, {8: 16, 16: 32, 32: 48, 64: 96, 128: 176, 256: 256}), (512, {16: 16, 64: 48, 128: 96, 256: 176, 512: 256})],
)
def test_released_256_and_512_token_tables(n, checks):
    s = ResolutionSchedule(256, n, 8, 8, 1.5, 16, 16)
    assert {t: s.decoder_resolution(t) for t in checks} == checks


def test_causal_prefix_longer_than_a_group():
    s = ResolutionSchedule(64, 32, 4, 8, 1.5, 8, 8)
    assert list(s.token_list) == [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 28, 32]


def test_invalid_prefix_names_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"num_tokens=5 is not a valid prefix length; expected one of \[1, 2, 3, 4, 8"
    ):
        tiny().check_prefix(5)
    assert tiny().check_prefix(8) == 8


@pytest.mark.parametrize(
    "args, message",
    [
        ((64, 30, 4, 4, 1.5, 8, 8), "multiple of group_size"),
        ((64, 32, 4, 6, 1.5, 8, 8), "causal_num"),
        ((64, 32, 4, 4, 1.5, 16, 8), "encoder_patch_size"),
    ],
)
def test_bad_schedules(args, message):
    with pytest.raises(ValueError, match=message):
        ResolutionSchedule(*args)
