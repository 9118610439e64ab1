"""Tuning: post-processing chosen on out-of-fold data. oof_stats reduces the OOF maps to histograms, search is the
first stage, soft / double / components the optional ones, gain the class switch-off, checks the trust checks,
plot_data and plots what the choice looked like; tune runs them in order (host only, numpy)."""
