from .._stub import not_yet

corr_decay = not_yet("sm.pl.corr_decay", "diagnostics issue")
similarity_cdf = not_yet("sm.pl.similarity_cdf", "diagnostics issue")
