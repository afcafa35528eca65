from .._stub import not_yet

deconvolve = not_yet("sm.tl.deconvolve", "deconvolution issue")
