"""The trained policy as a SavedModel that TensorFlow alone can load and run.

TF-Agents' PolicySaver writes signatures whose structures name TensorFlow Probability
TypeSpecs, so `tf.saved_model.load` fails unless tfp is imported first. Here the policy is
saved as a plain `tf.Module`: the actor's variables and two functions of one input,

    serving_default: observation float32 [batch, obs_dim] -> action, env_action (deterministic)
    sample:          observation float32 [batch, obs_dim] -> action, env_action (stochastic)

`action` is the policy's action in [-1, 1] (the mode for `serving_default`: tanh(mu) for
both squashes; a draw from the policy for `sample`); `env_action` is the same action
rescaled to the environment's own bounds, ready to send to it. The graph holds only core
TensorFlow ops (ERA's scale included), so TF Serving and a process without tfp, TF-Agents,
Keras or this repository run it alike. `export_policy` writes it into TF Serving's layout.
"""

import pathlib

import tensorflow as tf

from pipelines.common.run_dir import write_json_atomic

SAMPLE_SIGNATURE = "sample"


class PolicyServable(tf.Module):
    """observation -> action (in [-1, 1]) and env_action (in the env's bounds)."""

    def __init__(self, actor_network, observation_size, action_low, action_high):
        super().__init__(name="policy")
        # Track the variables only: an attribute holding the TF-Agents network would save
        # its distribution-valued functions too, whose specs need tfp to load. The
        # functions below reach the network through their closure instead.
        self.policy_variables = list(actor_network.variables)
        low, high = (tf.constant(bound, tf.float32) for bound in (action_low, action_high))
        spec = tf.TensorSpec([None, int(observation_size)], tf.float32, name="observation")

        def outputs(action):
            return {"action": action, "env_action": low + (action + 1.0) * 0.5 * (high - low)}

        def distribution(observation):
            return actor_network(observation, step_type=(), network_state=(), training=False)[0]

        def deterministic(observation):
            return outputs(distribution(observation).mode())

        def sample(observation):
            return outputs(tf.clip_by_value(distribution(observation).sample(), -1.0, 1.0))

        self.deterministic = tf.function(deterministic, input_signature=[spec])
        self.sample = tf.function(sample, input_signature=[spec])


def save_policy(actor_network, observation_size, action_bounds, saved_model_dir, about):
    """Save the servable to `saved_model_dir` (+ assets.extra/action_space.json)."""
    low, high = action_bounds
    servable = PolicyServable(actor_network, observation_size, low, high)
    tf.saved_model.save(
        servable,
        str(saved_model_dir),
        signatures={"serving_default": servable.deterministic,
                    SAMPLE_SIGNATURE: servable.sample},
    )
    write_json_atomic(
        pathlib.Path(saved_model_dir) / "assets.extra" / "action_space.json",
        {**about, "policy_action_range": [-1.0, 1.0], "env_action_low": list(low),
         "env_action_high": list(high),
         "outputs": "action in [-1, 1]; env_action = low + (action + 1) / 2 * (high - low)",
         "signatures": {"serving_default": "deterministic (the policy's mode)",
                        SAMPLE_SIGNATURE: "stochastic (a draw from the policy)"}},
    )
    return pathlib.Path(saved_model_dir)


def export_policy(actor_network, observation_size, action_bounds, run_dir, export_base,
                  model_name, about):
    """Save the policy under `<run_dir>/policy` and copy it into TF Serving's layout,
    `<export_base>/<model_name>/<next version>/`; returns (saved model dir, version dir)."""
    from serving.export import copy_into_layout

    saved_model_dir = save_policy(actor_network, observation_size, action_bounds,
                                  pathlib.Path(run_dir) / "policy", about)
    version_dir, _ = copy_into_layout(saved_model_dir, export_base, model_name)
    return saved_model_dir, version_dir
