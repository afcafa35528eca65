from .._stub import not_yet

props = not_yet("sm.pl.props", "deconvolution issue")
