"""Scoring: a model source resolved once, its fold models averaged on the device, rows out; the one layer under
predict, rescore, pseudo, Beam, the Kaggle kit and the demo."""
