from .._stub import not_yet

corr_decay = not_yet("sm.tl.corr_decay", "diagnostics issue")
similarity_decay = not_yet("sm.tl.similarity_decay", "diagnostics issue")
fit_decay = not_yet("sm.tl.fit_decay", "diagnostics issue")
