"""Every figure of sdpo_kit: report, partition cards and dataset cards draw with these functions.

    python -c "import matplotlib.pyplot as plt; from sdpo_kit.plots import plot_reference_margins; \
plot_reference_margins([{'name': 'S', 'mean_margin': -3.0, 'sem': 0.4}], plt.gca()); plt.savefig('g.png')"

Each plot function takes plain data and an Axes and returns the Axes, so it can be reused in a
notebook with whatever data you have; `sdpo report` feeds them from the run directory (see
`sdpo_kit/report/html.py` for where each input comes from) and the cards from the pairs
(`sdpo_kit/curate/card.py`). By subject: `base` (style, `save_figure`, colours,
`axes_series`), `training` (curves of a run), `data` (partition and dataset cards), `evaluation`
(held-out figures and the run comparison); every public name is re-exported here, so
`from sdpo_kit import plots; plots.plot_x(...)` works for all of them.
"""

from sdpo_kit.plots.base import (  # noqa: F401
    STEP_COLORS, STYLE, REPORT, CARD, save_figure, step_color, model_color, rank_rho, axes_series,
)
from sdpo_kit.plots.training import (  # noqa: F401
    plot_reward_margin_timeline, plot_end_of_step, plot_loss_per_step, plot_reward_accuracy_per_step,
)
from sdpo_kit.plots.data import (  # noqa: F401
    plot_partition_margins, plot_partition_sources, LENGTH_COLS, with_lengths, plot_lengths,
    plot_key_vs_length,
)
from sdpo_kit.plots.evaluation import (  # noqa: F401
    REFERENCE_WORDS, REFERENCE_AXIS, plot_reference_margins, plot_accuracy_by_source, plot_run_comparison,
    plot_margin_vs_signal, plot_accuracy_sum_avg, plot_accuracy_by_length, plot_gamma_vs_length,
)
