"""Report: held-out evaluation, figures, data cards and the one-file HTML report."""
