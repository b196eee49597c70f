"""The Red Deer Algorithm alone, on standard test functions: it must beat random search at an equal
budget of evaluations, by the margins stated here (medians over five seeds, 10 dimensions)."""
import numpy as np
import pytest

from leukoscreen.training.red_deer import Dimension, decode, random_search, red_deer


def values(params: dict) -> np.ndarray:
    return np.array(list(params.values()))


def sphere(params):
    return float(np.sum(values(params) ** 2))


def rastrigin(params):
    x = values(params)
    return float(10 * len(x) + np.sum(x ** 2 - 10 * np.cos(2 * np.pi * x)))


def ackley(params):
    x = values(params)
    return float(-20 * np.exp(-0.2 * np.sqrt(np.mean(x ** 2))) - np.exp(np.mean(np.cos(2 * np.pi * x))) + 20 + np.e)


# function, bound, how many times lower RDA's median best must be than random search's
CASES = [(sphere, 5.12, 50.0), (rastrigin, 5.12, 1.5), (ackley, 32.768, 3.0)]


@pytest.mark.parametrize("function, bound, margin", CASES, ids=[c[0].__name__ for c in CASES])
def test_rda_beats_random_search_at_equal_budget(function, bound, margin):
    space = [Dimension(f"x{i}", "float", -bound, bound) for i in range(10)]
    rda = [red_deer(function, space, 3000, seed=seed) for seed in range(5)]
    rand = [random_search(function, space, 3000, seed=seed) for seed in range(5)]
    assert all(len(r.history) == 3000 for r in rda + rand)  # the same budget, spent exactly
    rda_best, random_best = np.median([r.best_value for r in rda]), np.median([r.best_value for r in rand])
    assert rda_best * margin < random_best, (rda_best, random_best)


def test_seeded_runs_repeat_and_mixed_dimensions_decode():
    space = [Dimension("units", "int", 16, 128), Dimension("cell", "choice", choices=("lstm", "gru")),
             Dimension("learning_rate", "float", 1e-4, 1e-2, log=True)]

    def objective(p):  # best: 64 units, GRU, learning rate 1e-3
        return abs(p["units"] - 64) / 64 + (p["cell"] != "gru") + abs(np.log10(p["learning_rate"]) + 3)

    first, again = red_deer(objective, space, 300, seed=3), red_deer(objective, space, 300, seed=3)
    assert first.history == again.history
    assert first.best_params["cell"] == "gru" and abs(first.best_params["units"] - 64) <= 4
    assert 5e-4 < first.best_params["learning_rate"] < 2e-3
    corner = decode(space, np.array([-1.0, 1.0, 1.0]))
    assert corner["units"] == 16 and corner["cell"] == "gru" and corner["learning_rate"] == pytest.approx(1e-2)


@pytest.mark.parametrize("make, message", [
    (lambda: Dimension("x", "float", 2, 1), "low 2 is above high 1"),
    (lambda: Dimension("x", "float", 0, 1, log=True), "log scale"),
    (lambda: Dimension("x", "text"), "kind 'text'"),
    (lambda: red_deer(sphere, [Dimension("x", "float")], 10, population=20), "budget 10"),
    (lambda: red_deer(sphere, [Dimension("x", "float")], 100, males=20), "males = 20"),
])
def test_impossible_settings_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()
