"""Actor and critic networks for SAC, as TF-Agents networks (Keras 2 via tf_keras).

- `ERAProjectionNetwork`: the actor's last layer with Gaussian ERA (arXiv 2510.08549). A
  dense layer gives the mean `mu` and the raw scale head; `era_keras.gaussian_era` turns
  them into a Gaussian whose entropy is exactly H0 + delta (more where log_std_min clips).
  The executed action is either a normal truncated to (-1, 1) around tanh(mu) (the
  authors' choice) or tanh-squashed (TF-Agents' usual SAC policy), optionally with a
  bounded mean |mu| <= m so that the executed entropy keeps a floor delta can reach.
- `CriticNetwork`: Q(s, a) with LayerNorm + ELU hidden layers, the authors' critic.
- `executed_entropy`: entropy of the action the environment receives (after squashing),
  which is what ERA's delta is tuned on and what the pipeline reports.
"""

import tensorflow as tf
import tensorflow_probability as tfp
from tf_agents.agents.sac import sac_agent, tanh_normal_projection_network
from tf_agents.distributions import utils as distribution_utils
from tf_agents.networks import actor_distribution_network, network
from tf_agents.networks import utils as network_utils
from tf_agents.specs import distribution_spec, tensor_spec

import era_keras

tfd = tfp.distributions


def check_unit_action_spec(action_spec):
    if not (
        float(tf.reduce_min(action_spec.minimum)) == -1.0
        and float(tf.reduce_max(action_spec.maximum)) == 1.0
        and float(tf.reduce_max(action_spec.minimum)) == -1.0
        and float(tf.reduce_min(action_spec.maximum)) == 1.0
    ):
        raise ValueError(
            f"The actor expects actions in [-1, 1] (envs.load_environment rescales them); "
            f"got {action_spec}."
        )


class ERAProjectionNetwork(network.DistributionNetwork):
    """Projects features to a bounded-action policy whose pre-squash entropy is H0 + delta.

    Args:
        sample_spec: the action spec; actions must lie in [-1, 1].
        target_entropy_per_dim: H0 / D in nats (authors: 0.25).
        squash: "truncated" (normal truncated to (-1, 1) with loc tanh(mu) and ERA's
            scale) or "tanh" (tanh of a Gaussian sample).
        delta: initial entropy compensation (nats), kept in `era_keras.delta_range`. It is a
            non-trainable variable of this network, so exported policies carry its value;
            `ERASacAgent` sets it.
        log_std_min, log_std_max: ERA's clip range for log sigma (authors: -8, 0).
        mean_bound: tanh only; m > 0 gives mu = m * tanh(mu_raw / m), so |mu| <= m and the
            executed entropy cannot fall without limit as means saturate (0: unbounded).
    """

    def __init__(
        self,
        sample_spec,
        target_entropy_per_dim=0.25,
        squash="truncated",
        delta=0.0,
        log_std_min=-8.0,
        log_std_max=0.0,
        mean_bound=0.0,
        name="ERAProjectionNetwork",
    ):
        if squash not in ("tanh", "truncated"):
            raise ValueError(f"squash={squash!r}; allowed: 'tanh', 'truncated'.")
        if mean_bound < 0 or (mean_bound > 0 and squash != "tanh"):
            raise ValueError(f"mean_bound={mean_bound}: a bound m > 0 applies to tanh only.")
        check_unit_action_spec(sample_spec)
        action_dim = sample_spec.shape.num_elements()
        self.target_entropy = float(target_entropy_per_dim) * action_dim
        era_keras.check_target_entropy(
            self.target_entropy, action_dim, log_std_min, log_std_max
        )
        self.delta_range = era_keras.delta_range(action_dim, self.target_entropy, log_std_max)
        self.mean_bound = float(mean_bound)
        super().__init__(
            input_tensor_spec=None,
            state_spec=(),
            output_spec=self._output_distribution_spec(sample_spec, squash, name),
            name=name,
        )
        self._sample_spec = sample_spec
        self.squash = squash
        self._log_std_min = float(log_std_min)
        self._log_std_max = float(log_std_max)
        self.delta = tf.Variable(
            float(min(max(delta, 0.0), self.delta_range[1])), trainable=False, name="delta"
        )
        self._projection_layer = tf.keras.layers.Dense(
            2 * action_dim, name="projection_layer"
        )

    @staticmethod
    def _output_distribution_spec(sample_spec, squash, name):
        params = {
            key: tensor_spec.TensorSpec(sample_spec.shape, sample_spec.dtype, f"{name}_{key}")
            for key in ("loc", "scale")
        }

        def build(loc, scale):
            if squash == "tanh":
                gaussian = tfd.MultivariateNormalDiag(loc=loc, scale_diag=scale)
                return distribution_utils.scale_distribution_to_spec(gaussian, sample_spec)
            truncated = tfd.TruncatedNormal(tf.tanh(loc), scale, low=-1.0, high=1.0)
            return tfd.Independent(truncated, reinterpreted_batch_ndims=1)

        return distribution_spec.DistributionSpec(build, params, sample_spec=sample_spec)

    @property
    def floor(self):
        """H0 + delta: the entropy of the Gaussian before squashing (nats)."""
        return self.target_entropy + self.delta

    def call(self, inputs, outer_rank, training=False, mask=None):
        batch_squash = network_utils.BatchSquash(outer_rank)
        features = batch_squash.flatten(inputs)
        mu, raw_scale = tf.split(self._projection_layer(features, training=training), 2, -1)
        if self.mean_bound > 0:
            mu = self.mean_bound * tf.tanh(mu / self.mean_bound)
        mu, std = era_keras.gaussian_era(
            mu, raw_scale, self.floor, self._log_std_min, self._log_std_max
        )
        mu = batch_squash.unflatten(mu)
        std = batch_squash.unflatten(std)
        return self.output_spec.build_distribution(loc=mu, scale=std), ()


def era_actor_network(observation_spec, action_spec, hidden_sizes, activation="elu",
                      **era_kwargs):
    """MLP (ELU by default) + ERA projection: TF-Agents' ActorDistributionNetwork, ERA head."""
    return actor_distribution_network.ActorDistributionNetwork(
        observation_spec,
        action_spec,
        fc_layer_params=tuple(hidden_sizes),
        activation_fn=tf.keras.activations.get(activation),
        continuous_projection_net=lambda spec: ERAProjectionNetwork(spec, **era_kwargs),
    )


def sac_actor_network(observation_spec, action_spec, hidden_sizes, activation="elu"):
    """The same MLP with TF-Agents' standard SAC head (tanh-Gaussian, clipped log std)."""
    check_unit_action_spec(action_spec)
    return actor_distribution_network.ActorDistributionNetwork(
        observation_spec,
        action_spec,
        fc_layer_params=tuple(hidden_sizes),
        activation_fn=tf.keras.activations.get(activation),
        continuous_projection_net=lambda spec: (
            tanh_normal_projection_network.TanhNormalProjectionNetwork(
                spec, std_transform=sac_agent.std_clip_transform
            )
        ),
    )


def era_head(actor_network):
    """The ERAProjectionNetwork inside an actor built by `era_actor_network` (or None)."""
    head = getattr(actor_network, "_projection_networks", None)
    head = tf.nest.flatten(head)[0] if head is not None else None
    return head if isinstance(head, ERAProjectionNetwork) else None


class CriticNetwork(network.Network):
    """Q(s, a): concat -> [Dense -> LayerNorm -> ELU] per hidden size -> Dense(1).

    `layer_norm=False, activation="relu"` gives the plain MLP critic of Stable-Baselines3
    and most SAC code (used for like-for-like speed comparisons).
    """

    def __init__(self, input_tensor_spec, hidden_sizes, layer_norm=True, activation="elu",
                 name="CriticNetwork"):
        super().__init__(input_tensor_spec=input_tensor_spec, state_spec=(), name=name)
        self._hidden_layers = []
        for size in hidden_sizes:
            self._hidden_layers.append(tf.keras.layers.Dense(size))
            if layer_norm:
                self._hidden_layers.append(tf.keras.layers.LayerNormalization())
            self._hidden_layers.append(tf.keras.layers.Activation(activation))
        self._q_value_layer = tf.keras.layers.Dense(1, name="q_value")

    def call(self, inputs, step_type=(), network_state=(), training=False):
        observations, actions = inputs
        hidden = tf.concat([tf.cast(observations, tf.float32), actions], axis=-1)
        for layer in self._hidden_layers:
            hidden = layer(hidden, training=training)
        return tf.squeeze(self._q_value_layer(hidden), axis=-1), network_state


def executed_entropy(action_distribution, num_samples=4):
    """Entropy (nats) of the executed actions, one value per state.

    tanh-squashed Gaussian: Monte Carlo with the tanh correction
    (`era_keras.tanh_gaussian_entropy`), stable when the mean saturates. Truncated normal:
    tfp's closed form, summed over action dimensions. Actions must lie in [-1, 1].
    """
    if isinstance(action_distribution, distribution_utils.SquashToSpecNormal):
        gaussian = action_distribution.input_distribution
        return era_keras.tanh_gaussian_entropy(
            gaussian.mean(), gaussian.stddev(), num_samples=num_samples
        )
    if isinstance(action_distribution, tfd.Independent):
        return action_distribution.entropy()
    raise TypeError(f"No executed-entropy rule for {type(action_distribution).__name__}.")


def pre_squash_entropy(action_distribution):
    """Entropy of the Gaussian before squashing: what ERA's floor bounds (tanh only)."""
    if isinstance(action_distribution, distribution_utils.SquashToSpecNormal):
        return action_distribution.input_distribution.entropy()
    truncated = action_distribution.distribution
    return era_keras.gaussian_entropy(truncated.scale)
