"""GRPO with logit ERA for keras-hub causal LMs.

`python -m pipelines.grpo --help` for the command line; `pipelines.grpo.train.run(config)`
from Python. Modules: `config` (settings), `models` (presets and tiny offline models),
`tasks` and `rewards` (data, verifiable rewards), `rollout` (sampling groups), `loss`
(the GRPO+ERA objective), `warm_start`, `evaluate`, `train` (the loop), `export`.
"""
