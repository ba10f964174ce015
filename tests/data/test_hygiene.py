import numpy as np

from medpt.data.hygiene import in_validation, normalize_text, sample_indices


def test_split_is_stable_and_about_the_requested_share():
    keys = [f"问题{i}" for i in range(20000)]
    held = [in_validation(k, 5.0) for k in keys]
    assert 0.04 < sum(held) / len(keys) < 0.06
    assert held == [in_validation(k, 5.0) for k in keys]  # a pure function of the content
    assert not any(in_validation(k, 0.0) for k in keys)


def test_sampling_is_seeded_random_not_the_first_n():
    a = sample_indices(1000, 10, seed=1)
    assert np.array_equal(a, sample_indices(1000, 10, seed=1))
    assert not np.array_equal(a, sample_indices(1000, 10, seed=2))
    assert not np.array_equal(a, np.arange(10)) and (np.diff(a) > 0).all()
    assert np.array_equal(sample_indices(5, 10, seed=0), np.arange(5))


def test_normalize_modes():
    text = "ＡＢ，\r\n行尾空格   \n\n\n\n下一段 "
    assert normalize_text(text, "none") == text
    assert normalize_text(text, "nfc") == "ＡＢ，\n行尾空格\n\n下一段"
    assert normalize_text(text, "nfkc") == "AB,\n行尾空格\n\n下一段"
