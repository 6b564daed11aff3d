"""Submission tooling: the runs one scenario needs (`run`), and the v6.0 results tree (`build`)."""
