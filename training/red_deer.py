"""The Red Deer Algorithm (RDA; Fathollahi-Fard, Hajiaghaei-Keshteli and Tavakkoli-Moghaddam, Soft
Computing 24, 14637-14665, 2020), minimising a function over continuous, integer and categorical
dimensions within a fixed, seeded budget of evaluations; and random search at the same budget.

One generation: the best `n_males` red deer are males, the rest hinds. Males roar (Eq. 3: a move to a
random neighbour, kept if better); the best share `gamma` are commanders, the others stags (Eq. 4-5);
each commander fights a random stag (Eq. 6-7: two new solutions between them; the best of the four
becomes the commander). Hinds are shared into harems by the commanders' normalised power (Eq. 8-10); a
commander mates with a share `alpha` of his harem (Eq. 11-12) and with a share `beta` of another
harem (Eq. 13); each stag mates with its nearest hind (Eq. 14). The next generation keeps the males
and picks the rest from hinds and offspring by roulette on rank.

Search happens in a normalised space [-1, 1] per dimension (LB = -1, UB = 1), where the published moves
`a1 * ((UB - LB) * a2 + LB)` are symmetric. The offspring equations add `(UB - LB) * c` with c uniform
in [0, 1]; read literally that only ever pushes offspring to the upper bound, so here c is uniform in
[-1, 1] scaled by `offspring_spread`. That is this module's one interpretation of the paper.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Dimension:
    """One searched value: kind "float" (optionally log-scaled), "int" (inclusive range) or "choice"."""
    name: str
    kind: str
    low: float = 0.0
    high: float = 1.0
    choices: tuple = ()
    log: bool = False

    def __post_init__(self):
        if self.kind not in ("float", "int", "choice"):
            raise ValueError(f"{self.name}: kind {self.kind!r}: use float, int or choice")
        if self.kind == "choice" and len(self.choices) < 1:
            raise ValueError(f"{self.name}: a choice needs at least one option")
        if self.kind != "choice" and not self.low <= self.high:
            raise ValueError(f"{self.name}: low {self.low} is above high {self.high}")
        if self.log and (self.kind != "float" or self.low <= 0):
            raise ValueError(f"{self.name}: a log scale needs a float range above 0")

    def decode(self, x: float):
        u = (float(np.clip(x, -1.0, 1.0)) + 1.0) / 2.0  # 0..1
        if self.kind == "choice":
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + u * (self.high - self.low)
        return int(round(value)) if self.kind == "int" else value


def decode(space: list[Dimension], x: np.ndarray) -> dict:
    return {d.name: d.decode(v) for d, v in zip(space, x)}


class BudgetSpent(Exception):
    pass


@dataclass
class SearchResult:
    best_x: np.ndarray
    best_value: float
    best_params: dict
    history: list[tuple[dict, float]] = field(default_factory=list)  # every evaluation, in order


class _Counter:
    """Counts evaluations against the budget and keeps the best and the history."""

    def __init__(self, space, objective, budget):
        self.space, self.objective, self.budget = space, objective, budget
        self.history: list[tuple[dict, float]] = []
        self.best_x, self.best_value = None, math.inf

    def __call__(self, x: np.ndarray) -> float:
        if len(self.history) >= self.budget:
            raise BudgetSpent
        x = np.clip(x, -1.0, 1.0)
        params = decode(self.space, x)
        value = float(self.objective(params))
        if not math.isfinite(value):
            value = math.inf
        self.history.append((params, value))
        if value < self.best_value:
            self.best_x, self.best_value = x.copy(), value
        return value

    def result(self) -> SearchResult:
        return SearchResult(self.best_x, self.best_value, decode(self.space, self.best_x), self.history)


def random_search(objective: Callable[[dict], float], space: list[Dimension], budget: int, seed: int = 0) -> SearchResult:
    rng = np.random.default_rng(seed)
    count = _Counter(space, objective, budget)
    for _ in range(budget):
        count(rng.uniform(-1.0, 1.0, len(space)))
    return count.result()


def red_deer(objective: Callable[[dict], float], space: list[Dimension], budget: int, seed: int = 0,
             population: int = 20, males: int = 5, alpha: float = 0.9, beta: float = 0.4, gamma: float = 0.7,
             offspring_spread: float = 0.05) -> SearchResult:
    """Minimise objective(params) with RDA within `budget` evaluations (the paper's alpha, beta, gamma)."""
    if not 2 <= males < population:
        raise ValueError(f"males = {males}: use 2 <= males < population ({population})")
    if budget < population:
        raise ValueError(f"budget {budget} is smaller than the population {population}")
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} = {value}: use a fraction in [0, 1]")
    rng = np.random.default_rng(seed)
    evaluate = _Counter(space, objective, budget)
    dims = len(space)
    lb, ub = -1.0, 1.0

    def neighbour_step():  # a1 * ((UB - LB) * a2 + LB), per dimension
        return rng.uniform(0, 1, dims) * ((ub - lb) * rng.uniform(0, 1, dims) + lb)

    def offspring(a, b):  # Eq. 12-14: the mean of the parents plus a spread (see the module note)
        return np.clip((a + b) / 2 + (ub - lb) * offspring_spread * rng.uniform(-1, 1, dims), lb, ub)

    deer = rng.uniform(lb, ub, (population, dims))
    try:
        values = np.array([evaluate(x) for x in deer])
        while True:
            order = np.argsort(values)
            deer, values = deer[order], values[order]
            male, male_value = deer[:males].copy(), values[:males].copy()
            hinds, hind_values = deer[males:].copy(), values[males:].copy()
            for i in range(males):  # roaring (Eq. 3)
                step = neighbour_step()
                candidate = np.clip(male[i] + step if rng.uniform() >= 0.5 else male[i] - step, lb, ub)
                value = evaluate(candidate)
                if value < male_value[i]:
                    male[i], male_value[i] = candidate, value
            order = np.argsort(male_value)
            male, male_value = male[order], male_value[order]
            n_commanders = max(1, min(males - 1, int(round(gamma * males))))  # Eq. 4-5
            for i in range(n_commanders):  # fights (Eq. 6-7)
                s = rng.integers(n_commanders, males)
                middle = (male[i] + male[s]) / 2
                step = rng.uniform() * ((ub - lb) * rng.uniform(0, 1, dims) + lb)
                contenders = [(male_value[i], male[i]), (male_value[s], male[s])]
                for new in (np.clip(middle + step, lb, ub), np.clip(middle - step, lb, ub)):
                    contenders.append((evaluate(new), new))
                best_value, best = min(contenders, key=lambda pair: pair[0])
                male[i], male_value[i] = best.copy(), best_value
            commanders, commander_values = male[:n_commanders], male_value[:n_commanders]
            stags = male[n_commanders:]
            # harems by normalised power (Eq. 8-10): better (lower) commanders get more hinds
            power = np.max(commander_values) - commander_values
            power = power / power.sum() if power.sum() > 0 else np.full(n_commanders, 1 / n_commanders)
            sizes = np.floor(power * len(hinds)).astype(int)
            sizes[np.argmax(power)] += len(hinds) - sizes.sum()
            shuffled = rng.permutation(len(hinds))
            harems = np.split(shuffled, np.cumsum(sizes)[:-1])
            children = []
            for c, harem in enumerate(harems):
                for h in rng.permutation(harem)[: int(round(alpha * len(harem)))]:  # Eq. 11-12
                    children.append(offspring(commanders[c], hinds[h]))
                if n_commanders > 1:  # Eq. 13: a share of another, random harem
                    other = harems[rng.choice([k for k in range(n_commanders) if k != c])]
                    for h in rng.permutation(other)[: int(round(beta * len(other)))]:
                        children.append(offspring(commanders[c], hinds[h]))
            for stag in stags:  # Eq. 14: the nearest hind
                nearest = np.argmin(np.linalg.norm(hinds - stag, axis=1))
                children.append(offspring(stag, hinds[nearest]))
            child_values = np.array([evaluate(x) for x in children])
            # next generation: every male, then hinds and offspring by roulette on rank
            pool = np.vstack([hinds] + ([np.array(children)] if children else []))
            pool_values = np.concatenate([hind_values, child_values])
            ranks = np.argsort(np.argsort(pool_values))
            weights = (len(pool) - ranks).astype(float)
            chosen = rng.choice(len(pool), population - males, replace=False, p=weights / weights.sum())
            deer = np.vstack([male, pool[chosen]])
            values = np.concatenate([male_value, pool_values[chosen]])
    except BudgetSpent:
        pass
    return evaluate.result()
