"""SAC with Gaussian ERA on MuJoCo (gymnasium) and the DeepMind Control Suite, on TF-Agents.

Run it as `python -m pipelines.sac --help`. TF-Agents needs Keras 2 (`tf_keras`): the entry
point sets TF_USE_LEGACY_KERAS=1 before TensorFlow is imported. Modules: `config` (settings),
`envs` (environments), `networks` (ERA actor head, critic), `agent` (ERASacAgent, SacAgent),
`replay` (transition replay), `train` (loop, checkpoints, MLflow, export), `cli`.
"""
