"""Held-out evaluation protocols (make eval, eval-sync, eval-cross): each trains recipes on
caches that leave a kind of fake or a data set out and tables how well each finds it."""
