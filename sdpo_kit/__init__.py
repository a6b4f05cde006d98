"""sdpo_kit: stepwise DPO (sDPO, Kim et al. 2024) on top of TRL.

    sdpo data inspect data/dpo_en_demo.json
    sdpo curate score DATA --model default --out scored.parquet
    sdpo curate split scored.parquet --steps 3 --strategy easy-to-hard --out partitions/
    sdpo train --partitions partitions/ --model default --out runs/sdpo
    sdpo report runs/sdpo --out report/

Importing the package is cheap on purpose: heavy libraries (torch, transformers, trl)
are imported inside the functions that need them, so `sdpo --help` stays instant.
"""

__version__ = "0.1.0"
