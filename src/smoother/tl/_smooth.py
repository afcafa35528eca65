from .._stub import not_yet

smooth = not_yet("sm.tl.smooth", "smoothing issue")
impute = not_yet("sm.tl.impute", "smoothing issue")
enhance = not_yet("sm.tl.enhance", "smoothing issue")
