"""The scoring engine every job uses: TRL-exact reference log-probs of preference pairs.

`tokens` (TRL's tokenisation and truncation) -> `logps` (fast summed log-probs) -> `frame`
(`ScoreConfig`, `score_frame`: scored columns, provenance) -> `cache` (the pair cache) ->
`files` (a whole file: shards, resume, accelerate); `dpo` holds the DPO formulas on those numbers.
"""
