"""Choosing the next token: greedy, temperature, top-k, top-p, seeds and the repetition penalty."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dsguard.runner.sampling import Sampler, SamplingParams

PROBS = np.array([0.05, 0.5, 0.15, 0.3], dtype=np.float64)
LOGITS = np.log(PROBS).astype(np.float32)


def draws(params: SamplingParams, logits: np.ndarray, count: int = 400) -> list[int]:
    sampler = Sampler(params)
    return [sampler(logits) for _ in range(count)]


def test_greedy_picks_the_argmax_of_every_row() -> None:
    rng = np.random.default_rng(1)
    sampler = Sampler(SamplingParams(temperature=0))
    for _ in range(50):
        logits = rng.standard_normal(2048).astype(np.float32)
        assert sampler(logits) == int(np.argmax(logits))


def test_top_k_of_one_is_greedy_whatever_the_temperature() -> None:
    assert set(draws(SamplingParams(temperature=5.0, top_k=1, seed=3), LOGITS)) == {1}


def test_temperature_zero_never_divides_and_ignores_the_other_knobs() -> None:
    params = SamplingParams(temperature=0, top_p=0.1, top_k=3, seed=9)
    assert params.problem() is None
    assert set(draws(params, LOGITS, 20)) == {1}


def test_a_seeded_request_repeats_exactly() -> None:
    params = SamplingParams(temperature=1.0, seed=1234)
    assert draws(params, LOGITS) == draws(params, LOGITS)


def test_different_seeds_give_different_draws() -> None:
    assert draws(SamplingParams(seed=1), LOGITS) != draws(SamplingParams(seed=2), LOGITS)


def test_sampling_follows_the_distribution() -> None:
    counts = np.bincount(draws(SamplingParams(seed=5), LOGITS, 4000), minlength=4) / 4000
    assert np.allclose(counts, PROBS, atol=0.03)


def test_top_k_restricts_the_support_to_the_k_most_likely() -> None:
    assert set(draws(SamplingParams(top_k=2, seed=7), LOGITS)) == {1, 3}


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    assert set(draws(SamplingParams(top_p=0.8, seed=7), LOGITS)) == {1, 3}
    assert set(draws(SamplingParams(top_p=0.81, seed=7), LOGITS)) == {1, 2, 3}


def test_top_p_on_a_large_vocabulary_matches_a_full_sort() -> None:
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal(5000) * 3).astype(np.float32)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    nucleus = set(order[: int(np.searchsorted(np.cumsum(probs[order]), 0.9)) + 1].tolist())
    assert set(draws(SamplingParams(top_p=0.9, seed=11), logits, 3000)) <= nucleus


def test_top_k_and_top_p_combine() -> None:
    assert set(draws(SamplingParams(top_k=3, top_p=0.6, seed=2), LOGITS)) == {1, 3}


def test_low_temperature_concentrates_on_the_most_likely_token() -> None:
    assert set(draws(SamplingParams(temperature=0.05, seed=3), LOGITS)) == {1}


def test_repetition_penalty_demotes_tokens_already_seen() -> None:
    logits = np.array([1.0, 3.0, 2.0, -1.0], dtype=np.float32)
    assert Sampler(SamplingParams(temperature=0), prompt_ids=[1])(logits) == 1
    assert Sampler(SamplingParams(temperature=0, repetition_penalty=2.0), prompt_ids=[1])(logits) == 2


def test_repetition_penalty_makes_negative_logits_more_negative() -> None:
    logits = np.array([-1.0, -1.5, -4.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0, repetition_penalty=2.0), prompt_ids=[0])
    assert sampler(logits) == 1


def test_repetition_penalty_counts_generated_tokens_and_leaves_the_logits_untouched() -> None:
    logits = np.array([2.0, 1.9, 0.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0, repetition_penalty=1.5))
    assert [sampler(logits), sampler(logits)] == [0, 1]
    assert logits.tolist() == pytest.approx([2.0, 1.9, 0.0])


@pytest.mark.parametrize(("params", "word"), [
    (SamplingParams(temperature=-0.1), "temperature"),
    (SamplingParams(top_p=0.0), "top_p"),
    (SamplingParams(top_p=1.5), "top_p"),
    (SamplingParams(top_k=-1), "top_k"),
    (SamplingParams(repetition_penalty=0.0), "repetition_penalty"),
    (SamplingParams(seed=-1), "seed"),
    (SamplingParams(frequency_penalty=2.5), "frequency_penalty"),
    (SamplingParams(presence_penalty=float("nan")), "presence_penalty"),
])
def test_unusable_parameters_are_named(params: SamplingParams, word: str) -> None:
    problem = params.problem()
    assert problem is not None and problem.startswith(word)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1e-320, seed=4),
    SamplingParams(temperature=1e-320, top_k=3, top_p=0.9, seed=4),
])
def test_logits_scaled_beyond_float_range_fall_back_to_the_argmax_without_warnings(params: SamplingParams) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(draws(params, LOGITS, 20)) == {1}


@pytest.mark.parametrize("penalty", [1e-320, 1e308])
def test_an_extreme_repetition_penalty_never_yields_nan_probabilities(penalty: float) -> None:
    sampler = Sampler(SamplingParams(repetition_penalty=penalty, seed=4), prompt_ids=[0, 1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        picks = [sampler(LOGITS) for _ in range(20)]
    assert all(0 <= token < LOGITS.size for token in picks)


def test_frequency_and_presence_penalties_subtract_from_generated_tokens_only() -> None:
    logits = np.array([3.0, 2.9, 2.0, 0.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0, frequency_penalty=0.5, presence_penalty=0.2), prompt_ids=[1])
    picks = [sampler(logits) for _ in range(4)]
    # 0 (3.0) -> 3.0-0.7=2.3, so 1 (2.9, a prompt token: not penalized) -> 2.2, then 0 at 2.3 -> 1.8, then 1 at 2.2
    assert picks == [0, 1, 0, 1]
    assert logits.tolist() == pytest.approx([3.0, 2.9, 2.0, 0.0])


def test_a_negative_presence_penalty_favours_tokens_already_generated() -> None:
    logits = np.array([1.0, 0.5], dtype=np.float32)
    pushed = Sampler(SamplingParams(temperature=0, frequency_penalty=1.0))
    assert [pushed(logits) for _ in range(3)] == [0, 1, 0]  # 1.0 - 1 = 0.0 < 0.5, then 0.5 - 1 < 0.0
    pulled = Sampler(SamplingParams(temperature=0, frequency_penalty=1.0, presence_penalty=-2.0))
    assert [pulled(logits) for _ in range(3)] == [0, 0, 0]  # 1.0 - 1 + 2 = 2.0, then 1.0 - 2 + 2 = 1.0
    assert SamplingParams(presence_penalty=-2.0).penalized and not SamplingParams().penalized
