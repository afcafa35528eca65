from .._stub import not_yet

lattice = not_yet("sm.datasets.lattice", "foundation issue")
simulate_field = not_yet("sm.datasets.simulate_field", "foundation issue")
simulate_mixture = not_yet("sm.datasets.simulate_mixture", "foundation issue")
