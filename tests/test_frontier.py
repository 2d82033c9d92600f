"""The frontier table against brute force, the spaces, the costs and the error proxy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bort import Arch, ConfigError, Layer, _core
from bort.config import SearchConfig
from bort.costs import Importance, cost, decompose, error_proxy
from bort.search import LayerwiseSpace, UniformSpace, frontier
from bort.space import SPACES

REL = 1e-12  # floating-point slack on the (1 + ε) factor


def pareto(points):
    """Brute-force Pareto set of (cost, error) pairs: no other pair is ≤ in both."""
    pts = set(points)
    return {p for p in pts if not any(q != p and q[0] <= p[0] and q[1] <= p[1] for q in pts)}


def covers(front, points, epsilon: float) -> float:
    """Worst ratio min{cost(y) : y in front, e(y) ≤ e(x)} / cost(x) over x in points."""
    worst = 1.0
    for c, e in points:
        best = min((fc for fc, fe in front if fe <= e + 1e-9), default=math.inf)
        worst = max(worst, best / c if c > 0 else (1.0 if best == 0 else math.inf))
    return worst


def random_importance(src: Arch, rng: np.random.Generator, integer: bool = True) -> Importance:
    draw = (lambda n: rng.integers(0, 9, n).astype(float)) if integer else (
        lambda n: rng.lognormal(0, 1, n))
    return Importance(src, [draw(x.heads) for x in src.layers],
                      [draw(x.ffn) for x in src.layers], draw(src.hidden))


def random_source(rng: np.random.Generator, max_layers: int = 4) -> Arch:
    layers = [(int(rng.integers(1, 4)), 8, int(rng.integers(1, 5)) * 8)
              for _ in range(int(rng.integers(1, max_layers + 1)))]
    return Arch(hidden=24, layers=layers, vocab_size=50, max_positions=16)


# ---------------------------------------------------------------------- the DP, bare
choice_lists = st.lists(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=1,
                                 max_size=5), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(layers=choice_lists, base=st.integers(0, 5), eps=st.sampled_from([0.0, 0.05, 0.3, 2.0]))
def test_dp_against_brute_force(layers, base, eps) -> None:
    arrays = [(np.array([c for c, _ in l], float), np.array([e for _, e in l], float))
              for l in layers]
    c, e, pick = _core.frontier_solve(arrays, float(base), 1.0, eps, 10**6)
    everything = [(base + sum(l[k][0] for l, k in zip(layers, combo)),
                   1 + sum(l[k][1] for l, k in zip(layers, combo)))
                  for combo in itertools.product(*[range(len(l)) for l in layers])]
    for row, cc, ee in zip(pick, c, e):  # every point is what its choices add up to
        assert (cc, ee) == (base + sum(layers[l][k][0] for l, k in enumerate(row)),
                            1 + sum(layers[l][k][1] for l, k in enumerate(row)))
    if eps == 0:
        assert set(zip(c, e)) == pareto(everything)
    else:
        assert covers(list(zip(c, e)), everything, eps) <= (1 + eps) * (1 + REL)
    assert np.all(np.diff(c) > 0) and np.all(np.diff(e) < 0)


def test_dp_rejects_bad_input() -> None:
    ok = (np.array([1.0, 2.0]), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        _core.frontier_solve([ok], 0.0, 0.0, -0.1, 100)
    with pytest.raises(ValueError, match="layer 1 has no choices"):
        _core.frontier_solve([ok, (np.array([]), np.array([]))], 0.0, 0.0, 0.1, 100)
    with pytest.raises(ValueError, match="cost and error differ"):
        _core.frontier_solve([(np.array([1.0]), np.array([1.0, 2.0]))], 0.0, 0.0, 0.1, 100)
    with pytest.raises(ValueError, match="finite"):
        _core.frontier_solve([(np.array([np.nan]), np.array([1.0]))], 0.0, 0.0, 0.1, 100)
    with pytest.raises(ValueError, match="Pareto front"):
        _core.frontier_thin(np.array([1.0, 1.0]), np.array([2.0, 1.0]), 1.1)


# ---------------------------------------------------------------------- frontier() on spaces
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("kind", ["flops", "params"])
def test_layerwise_frontier_against_brute_force(seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    src = random_source(rng)
    space = LayerwiseSpace.from_source(src, head_step=1, ffn_step=8, hiddens=(16, 24))
    imp = random_importance(src, rng)
    points = [(cost(a, kind), error_proxy(a, imp)) for a in space.enumerate()]
    exact = frontier(space, 0, kind, imp)
    assert {(x.cost, x.error_proxy) for x in exact} == pareto(points)
    for eps in (0.01, 0.2):
        front = frontier(space, eps, kind, imp)
        got = [(x.cost, x.error_proxy) for x in front]
        assert covers(got, points, eps) <= (1 + eps) * (1 + REL)
        for x in front:  # each candidate's numbers are its architecture's
            assert x.cost == pytest.approx(cost(x.arch, kind), rel=1e-12)
            assert x.error_proxy == pytest.approx(error_proxy(x.arch, imp), rel=1e-12, abs=1e-9)
            assert x.params == x.arch.params().total


def test_24_layers_against_a_fine_grid() -> None:
    """At 24 layers brute force is out of reach: check against a 20× finer table, and the size."""
    rng = np.random.default_rng(7)
    src = Arch.uniform(24, 4, 64, 256)
    space = LayerwiseSpace.from_source(src, head_step=1, ffn_step=32)  # 5 × 9 choices per layer
    imp = random_importance(src, rng, integer=False)
    for eps in (0.1, 0.01):
        fine = frontier(space, eps / 20, "flops", imp)
        front = frontier(space, eps, "flops", imp)
        assert covers([(x.cost, x.error_proxy) for x in front],
                      [(x.cost, x.error_proxy) for x in fine], eps) <= (1 + eps) * (1 + REL)
        positive = [x.cost for x in front if x.cost > 0]
        bound = 2 * math.ceil(math.log(max(positive) / min(positive)) / math.log1p(eps)) + 1
        assert len(front) <= bound + 1  # + the zero-cost point


def test_uniform_space_of_the_paper() -> None:
    space = UniformSpace.bort()
    archs = space.enumerate()
    assert len(archs) == len(space) == 300
    shapes = {(len(a.layers), a.layers[0].heads, a.hidden, a.layers[0].ffn) for a in archs}
    assert len(shapes) == 300
    published = [a for a in archs if (len(a.layers), a.layers[0].heads, a.hidden,
                                      a.layers[0].ffn) == (4, 8, 768, 1024)]
    assert len(published) == 1
    assert published[0].params().total == 55_351_552
    assert published[0].flops(1, 128) == cost(published[0], "flops")


def test_uniform_frontier_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    src = Arch.uniform(6, 8, 256, 512)
    imp = random_importance(src, rng, integer=False)
    space = UniformSpace((1, 2, 4, 6), (2, 4, 8), (128, 192, 256), (64, 256, 512), base=src)
    points = [(cost(a, "flops"), error_proxy(a, imp)) for a in space.enumerate()]
    assert {(x.cost, x.error_proxy) for x in frontier(space, 0, "flops", imp)} == pareto(points)
    front = frontier(space, 0.1, "flops", imp)
    assert covers([(x.cost, x.error_proxy) for x in front], points, 0.1) <= 1.1 * (1 + REL)


# ---------------------------------------------------------------------- the registry of spaces
def used_sublayers(archs):
    """The attention and FFN shapes and hidden sizes the architectures use."""
    return ({(a.hidden, x.heads, x.head_dim) for a in archs for x in a.layers if x.heads},
            {(a.hidden, x.ffn) for a in archs for x in a.layers if x.ffn},
            {a.hidden for a in archs})


def test_spaces_by_name_and_their_sublayers() -> None:
    src = Arch.uniform(2, 4, 32, 64)
    for name in ("layerwise", "uniform"):
        space = SPACES[name](src)
        assert space.sublayers() == used_sublayers(space.enumerate())
    sized = LayerwiseSpace.from_source(src, head_step=2, ffn_step=32, hiddens=(16, 32))
    assert sized.sublayers() == used_sublayers(sized.enumerate())
    assert len(SPACES["bort"](Arch.uniform(12, 16, 1024, 3072))) == 300
    # hidden sizes from the search settings; the paper's grid keeps its own
    for name in ("layerwise", "uniform"):
        assert SearchConfig(space=name, hiddens=[16, 24]).space_of(src).hiddens == (16, 24)
    assert SearchConfig().space_of(src).hiddens == (32,)
    for name in ("layerwise", "uniform"):
        with pytest.raises(ConfigError, match="exceeds the source's 32"):
            SearchConfig(space=name, hiddens=[16, 48]).space_of(src)
    with pytest.raises(ConfigError, match="has the paper's hidden sizes"):
        SearchConfig(space="bort", hiddens=[512]).space_of(Arch.uniform(12, 16, 1024, 3072))
    with pytest.raises(ConfigError, match="needs a source at least as large as its grid"):
        SPACES["bort"](src)
    with pytest.raises(ConfigError, match="unknown search space 'nope'"):
        SPACES["nope"]


@pytest.fixture
def shallow():
    """The README's toy space ("Extending bort"), registered for one test."""
    @SPACES.register("shallow")
    def shallow(source):
        first = source.layers[0]
        return UniformSpace(depths=range(1, len(source.layers) // 2 + 1), heads=[first.heads],
                            hiddens=[source.hidden], ffns=[first.ffn // 2, first.ffn],
                            base=source)

    yield shallow
    SPACES.unregister("shallow")


def test_a_space_registered_from_outside(shallow) -> None:
    src = Arch.uniform(4, 2, 16, 32)
    assert SearchConfig(space="shallow").space == "shallow"
    space = SPACES["shallow"](src)
    imp = random_importance(src, np.random.default_rng(0))
    points = [(cost(a, "flops"), error_proxy(a, imp)) for a in space.enumerate()]
    assert {(x.cost, x.error_proxy) for x in frontier(space, 0, "flops", imp)} == pareto(points)


# ---------------------------------------------------------------------- costs and error proxy
def test_costs_decompose_additively() -> None:
    arch = Arch(hidden=48, layers=[(3, 16, 64), (0, 0, 80), (2, 8, 0)], num_labels=3)
    for kind, expected in (("params", arch.params().total), ("flops", arch.flops(2, 33))):
        base, layers = decompose(arch, kind, batch=2, seq_len=33)
        assert base + sum(layers) == expected == cost(arch, kind, batch=2, seq_len=33)
    assert cost(arch, "params", effective=True) == arch.params().encoder


def test_error_proxy_is_what_is_removed() -> None:
    src = Arch.uniform(2, 3, 12, 4)
    imp = Importance(src, [np.array([5.0, 1.0, 3.0]), np.array([2.0, 2.0, 7.0])],
                     [np.array([1.0, 4.0, 0.5, 2.0]), np.array([3.0, 1.0, 1.0, 1.0])],
                     np.arange(12, dtype=float))
    assert error_proxy(src, imp) == 0
    # layer 0 keeps its 2 best heads (drops 1.0), layer 1 its 1 best neuron (drops 1+1+1);
    # hidden 10 drops channels 0 and 1
    arch = Arch(hidden=10, layers=[(2, 4, 4), (3, 4, 1)])
    assert error_proxy(arch, imp) == 1.0 + 3.0 + 1.0
    # a uniform 1-layer arch keeps the source layer that costs most to drop (layer 1: 11 + 6)
    one = Arch.uniform(1, 3, 12, 4)
    assert error_proxy(one, imp) == 9.0 + 7.5
    # heads of size 2 instead of 4 keep half of what the kept heads carry
    assert error_proxy(Arch(hidden=12, layers=[(3, 2, 4), (3, 4, 4)]), imp) == 4.5
    with pytest.raises(ConfigError, match="not a part of source layer 0"):
        error_proxy(Arch(hidden=12, layers=[(4, 4, 4), (3, 4, 4)]), imp)


def test_importance_matches_source_and_round_trips(tmp_path) -> None:
    src = Arch.uniform(2, 3, 12, 4)
    good = Importance(src, [np.ones(3)] * 2, [np.ones(4)] * 2, np.ones(12))
    good.save(tmp_path / "imp.safetensors")
    back = Importance.load(tmp_path / "imp.safetensors")
    assert back.source == src and all(np.array_equal(a, b) for a, b in zip(back.heads, good.heads))
    with pytest.raises(ConfigError, match="layer 1 has 2 heads"):
        Importance(src, [np.ones(3), np.ones(2)], [np.ones(4)] * 2, np.ones(12))
    with pytest.raises(ConfigError, match="finite"):
        Importance(src, [np.ones(3)] * 2, [np.ones(4)] * 2, -np.ones(12))
    other = LayerwiseSpace.from_source(Arch.uniform(2, 3, 12, 8))
    with pytest.raises(ConfigError, match="not on this space's source"):
        frontier(other, 0.1, "flops", good)


# ---------------------------------------------------------------------- bad input
def test_bad_frontier_calls() -> None:
    src = Arch.uniform(3, 2, 16, 32)
    imp = Importance(src, [np.ones(2)] * 3, [np.ones(32)] * 3, np.ones(16))
    space = LayerwiseSpace.from_source(src, ffn_step=1)
    with pytest.raises(ValueError, match="epsilon must be"):
        frontier(space, -0.1, "flops", imp)
    with pytest.raises(ValueError, match="pass the source's importance"):
        frontier(space, 0.1, "flops")
    with pytest.raises(ValueError, match="unknown cost"):
        frontier(space, 0.1, "speed", imp)
    with pytest.raises(ValueError, match="needs a LatencyTable"):
        frontier(space, 0.1, "latency", imp)
    with pytest.raises(ValueError, match="exact front grows past max_states|over max_states"):
        frontier(space, 0, "flops", imp, max_states=50)


def test_bad_spaces() -> None:
    with pytest.raises(ConfigError, match="depths is empty"):
        UniformSpace((), (4,), (64,), (64,))
    with pytest.raises(ConfigError, match="space is empty"):
        UniformSpace((2,), (5,), (64,), (64,))
    with pytest.raises(ConfigError, match="more than enumerate"):
        LayerwiseSpace.from_source(Arch.uniform(24, 16, 1024, 4096)).enumerate()
    with pytest.raises(ConfigError, match="exceeds the source"):
        LayerwiseSpace.from_source(Arch.uniform(2, 2, 16, 16), hiddens=(8, 32))
    with pytest.raises(ConfigError, match="ffn_step must be"):
        LayerwiseSpace.from_source(Arch.uniform(2, 2, 16, 16), ffn_step=0)
    assert len(LayerwiseSpace.from_source(Arch.uniform(24, 16, 1024, 4096)).choices(3)) == 1105
    assert Layer(0, 0, 0) in LayerwiseSpace.from_source(Arch.uniform(1, 2, 16, 16)).choices(0)
