"""One vocabulary: every seeded public function takes `random_state` and records it under that name."""

from __future__ import annotations

import numpy as np
import pytest

import smoother as sm


def test_datasets_take_random_state_as_well_as_seed():
    a = sm.datasets.simulate_field(n_spots=100, random_state=3)
    b = sm.datasets.simulate_field(n_spots=100, seed=3)
    np.testing.assert_array_equal(a.X, b.X)
    m1, _ = sm.datasets.simulate_mixture(n_spots=100, random_state=4)
    m2, _ = sm.datasets.simulate_mixture(n_spots=100, seed=4)
    np.testing.assert_array_equal(np.asarray(m1.X.todense() if hasattr(m1.X, "todense") else m1.X),
                                  np.asarray(m2.X.todense() if hasattr(m2.X, "todense") else m2.X))  # fmt: skip
    with pytest.raises(TypeError, match="random_state"):
        sm.datasets.simulate_field(n_spots=100, seed=1, random_state=1)


def test_decay_tools_record_random_state():
    a = sm.datasets.simulate_field(n_spots=150, random_state=0)
    sm.pp.spatial_graph(a)
    sm.tl.corr_decay(a, random_state=5, max_k=5)
    sm.tl.similarity_decay(a, random_state=6, max_k=5)
    assert a.uns["corr_decay"]["icar_rho0.99"]["params"]["random_state"] == 5
    assert a.uns["corr_decay"]["data"]["params"]["random_state"] == 6
    sm.tl.smooth(a, lambda_spatial=1.0, random_state=7)
    assert a.uns["smoothed"]["params"]["random_state"] == 7
