"""ERA-SAC and the SAC baseline as TF-Agents agents (the shape of agents/sac/sac_agent.py).

- `SacAgent`: TF-Agents' SacAgent, unchanged except that it keeps Keras' current
  optimizers: TF-Agents converts them to legacy ones, and AdamW (the authors' critic
  optimizer) has no legacy twin. Standard SAC: alpha * log pi in the actor loss and the
  critic target, alpha auto-tuned towards a target entropy.
- `ERASacAgent`: ERA-SAC (arXiv 2510.08549). Entropy is the actor head's job
  (`networks.ERAProjectionNetwork`), so neither loss has an entropy term:
      actor loss     = -E[min(Q1, Q2)(s, a ~ pi)]
      critic target  = r + gamma * discount * min(Q1', Q2')(s', a' ~ pi)
  plus `delta_loss`, which tunes the head's delta so that the executed (squashed)
  policy's entropy meets its target, like SAC tunes alpha.

Why delta is tuned in log space: Adam moves a parameter by about its learning rate per
update whatever the gradient's size, so a delta stepped directly at lr 3e-4 crosses its
useful range [0, D (1.419 + log_std_max) - H0] (7 nats for D = 6, H0 = 1.5) in ~23k updates,
and a D = 21 task's 24.5 nats in ~80k. Stepping log(delta) instead moves delta by a fixed
*fraction* per update, the same for every D: from DELTA_MIN = 1e-3 nats to the top of the
range is log(7 / 1e-3) = 8.9 (D = 6) to log(24.5 / 1e-3) = 10.1 (D = 21) in log units,
which Adam at lr 1e-2 crosses in ~900-1,000 updates, and comes back down as fast. Near the
target the gradient's sign flips, Adam's momentum averages it out, and delta moves by
under lr = 1% of itself per update.
"""

import collections
import math

import tensorflow as tf
from tf_agents.agents import tf_agent
from tf_agents.agents.sac import sac_agent
from tf_agents.utils import common, object_identity

import era_keras
from pipelines.sac import networks
from pipelines.sac.entropy import executed_target

ERASacLossInfo = collections.namedtuple(
    "ERASacLossInfo", ("critic_loss", "actor_loss", "delta_loss", "entropy", "delta")
)
# The smallest tuned delta (nats): log space cannot reach 0; 1e-3 nats is no compensation.
DELTA_MIN = 1e-3


class SacAgent(sac_agent.SacAgent):
    """TF-Agents' SacAgent with Keras' current optimizers kept as they are."""

    def _convert_optimizer_to_legacy(self, optimizer):
        return optimizer

    @property
    def alpha(self):
        return tf.exp(self._log_alpha)

    @property
    def target_entropy(self):
        """The entropy (nats) that alpha (SAC) or delta (ERA) steers the policy towards."""
        return self._target_entropy


class ERASacAgent(SacAgent):
    """SAC whose actor head is Gaussian ERA; entropy terms leave the losses.

    Args (besides SacAgent's; `alpha_optimizer` is not used):
        delta_optimizer: steps log(delta) on `delta_loss`; None keeps delta constant.
        entropy_samples: Monte Carlo samples per state for the tanh policy's entropy.
        executed_target_entropy: what delta steers the executed policy's entropy to
            (nats); None: the head's pre-squash floor H0.
    """

    def __init__(
        self,
        time_step_spec,
        action_spec,
        critic_network,
        actor_network,
        actor_optimizer,
        critic_optimizer,
        delta_optimizer=None,
        entropy_samples=4,
        executed_target_entropy=None,
        **sac_kwargs,
    ):
        self._era_head = networks.era_head(actor_network)
        if self._era_head is None:
            raise ValueError(
                "ERASacAgent needs an actor whose head is an ERAProjectionNetwork "
                "(see networks.era_actor_network)."
            )
        super().__init__(
            time_step_spec,
            action_spec,
            critic_network,
            actor_network,
            actor_optimizer,
            critic_optimizer,
            alpha_optimizer=None,
            **sac_kwargs,
        )
        self._delta_optimizer = delta_optimizer
        self._entropy_samples = int(entropy_samples)
        self._target_entropy = (
            self._era_head.target_entropy if executed_target_entropy is None
            else float(executed_target_entropy)
        )
        # delta = exp(log_delta), kept inside the head's useful range (see the module doc).
        low, high = self._era_head.delta_range
        self._log_delta_bounds = (math.log(DELTA_MIN), math.log(max(high, DELTA_MIN)))
        self._log_delta = tf.Variable(
            math.log(min(max(float(self.delta.numpy()), DELTA_MIN), max(high, DELTA_MIN))),
            trainable=False, name="log_delta",
        )
        if delta_optimizer is not None:
            self.delta.assign(tf.exp(self._log_delta))

    @property
    def delta(self):
        return self._era_head.delta

    @property
    def entropy_floor(self):
        """H0 + delta: the entropy of the actor's Gaussian before squashing."""
        return self._era_head.floor

    def _action_distribution(self, time_steps, training):
        policy = self._train_policy if training else self._policy
        return policy.distribution(time_steps, policy_state=()).action

    def critic_loss(
        self,
        time_steps,
        actions,
        next_time_steps,
        td_errors_loss_fn=tf.math.squared_difference,
        gamma=0.99,
        reward_scale_factor=1.0,
        weights=None,
        training=False,
    ):
        """Twin-Q TD loss with target r + gamma * discount * min(Q1', Q2')(s', a' ~ pi)."""
        with tf.name_scope("critic_loss"):
            next_actions = self._action_distribution(next_time_steps, training=False).sample()
            target_input = (next_time_steps.observation, next_actions)
            target_q1, _ = self._target_critic_network_1(target_input, training=False)
            target_q2, _ = self._target_critic_network_2(target_input, training=False)
            td_targets = tf.stop_gradient(
                reward_scale_factor * next_time_steps.reward
                + gamma * next_time_steps.discount * tf.minimum(target_q1, target_q2)
            )
            pred_input = (time_steps.observation, actions)
            q1, _ = self._critic_network_1(pred_input, training=training)
            q2, _ = self._critic_network_2(pred_input, training=training)
            per_example = td_errors_loss_fn(td_targets, q1) + td_errors_loss_fn(td_targets, q2)
            return common.aggregate_losses(
                per_example_loss=per_example,
                sample_weight=weights,
                regularization_loss=(
                    self._critic_network_1.losses + self._critic_network_2.losses
                ),
            ).total_loss

    def actor_loss_and_entropy(self, time_steps, weights=None, training=True):
        """(-E[min(Q1, Q2)(s, a ~ pi)], executed-policy entropy per state)."""
        with tf.name_scope("actor_loss"):
            distribution = self._action_distribution(time_steps, training=training)
            actions = distribution.sample()
            q_input = (time_steps.observation, actions)
            q1, _ = self._critic_network_1(q_input, training=False)
            q2, _ = self._critic_network_2(q_input, training=False)
            loss = common.aggregate_losses(
                per_example_loss=-tf.minimum(q1, q2),
                sample_weight=weights,
                regularization_loss=self._actor_network.losses,
            ).total_loss
            entropy = networks.executed_entropy(distribution, self._entropy_samples)
            return loss, tf.stop_gradient(entropy)

    def actor_loss(self, time_steps, weights=None, training=True):
        return self.actor_loss_and_entropy(time_steps, weights, training)[0]

    @property
    def pre_squash_floor(self):
        """H0: the head's floor on the Gaussian before squashing (without delta)."""
        return self._era_head.target_entropy

    def delta_loss(self, entropy):
        """E[log delta * (H[pi] - target)]: delta grows while the executed entropy is below
        its target and shrinks above (`era_keras.delta_loss` on log delta)."""
        return era_keras.delta_loss(self._log_delta, entropy, self._target_entropy)

    def _train(self, experience, weights):
        time_steps, policy_steps, next_time_steps = self._as_transition(experience)

        critic_variables = list(
            object_identity.ObjectIdentitySet(
                self._critic_network_1.trainable_variables
                + self._critic_network_2.trainable_variables
            )
        )
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(critic_variables)
            critic_loss = self._critic_loss_weight * self.critic_loss(
                time_steps,
                policy_steps.action,
                next_time_steps,
                td_errors_loss_fn=self._td_errors_loss_fn,
                gamma=self._gamma,
                reward_scale_factor=self._reward_scale_factor,
                weights=weights,
                training=True,
            )
        tf.debugging.check_numerics(critic_loss, "Critic loss is inf or nan.")
        self._apply_gradients(
            tape.gradient(critic_loss, critic_variables),
            critic_variables,
            self._critic_optimizer,
        )

        actor_variables = self._actor_network.trainable_variables
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(actor_variables)
            actor_loss, entropy = self.actor_loss_and_entropy(time_steps, weights, True)
            actor_loss = self._actor_loss_weight * actor_loss
        tf.debugging.check_numerics(actor_loss, "Actor loss is inf or nan.")
        self._apply_gradients(
            tape.gradient(actor_loss, actor_variables), actor_variables, self._actor_optimizer
        )

        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(self._log_delta)
            delta_loss = self.delta_loss(entropy)
        if self._delta_optimizer is not None:
            self._delta_optimizer.apply_gradients(
                [(tape.gradient(delta_loss, self._log_delta), self._log_delta)]
            )
            self._log_delta.assign(tf.clip_by_value(self._log_delta, *self._log_delta_bounds))
            self.delta.assign(tf.exp(self._log_delta))

        self.train_step_counter.assign_add(1)
        self._update_target()
        return tf_agent.LossInfo(
            loss=critic_loss + actor_loss,
            extra=ERASacLossInfo(
                critic_loss=critic_loss,
                actor_loss=actor_loss,
                delta_loss=delta_loss,
                entropy=tf.reduce_mean(entropy),
                delta=tf.identity(self.delta),
            ),
        )


def make_agent(config, time_step_spec, action_spec, train_step_counter=None):
    """ERA-SAC (config.agent == "era") or standard SAC ("sac") with the config's settings."""
    observation_spec = time_step_spec.observation
    if train_step_counter is None:
        train_step_counter = tf.Variable(0, dtype=tf.int64, name="train_step")
    action_dim = action_spec.shape.num_elements()
    critic = networks.CriticNetwork(
        (observation_spec, action_spec), config.hidden_sizes,
        layer_norm=config.critic_layer_norm, activation=config.activation,
    )
    common_kwargs = dict(
        time_step_spec=time_step_spec,
        action_spec=action_spec,
        critic_network=critic,
        actor_optimizer=tf.keras.optimizers.Adam(config.actor_lr),
        critic_optimizer=tf.keras.optimizers.AdamW(
            config.critic_lr, weight_decay=config.critic_weight_decay
        ),
        # TF-Agents' defaults (gamma 1, tau 1) are not SAC's: set them explicitly.
        gamma=config.gamma,
        target_update_tau=config.tau,
        target_update_period=1,
        td_errors_loss_fn=tf.math.squared_difference,
        train_step_counter=train_step_counter,
    )
    if config.agent == "era":
        actor = networks.era_actor_network(
            observation_spec,
            action_spec,
            config.hidden_sizes,
            activation=config.activation,
            target_entropy_per_dim=config.target_entropy_per_dim,
            squash=config.squash,
            delta=config.delta,
            log_std_min=config.log_std_min,
            log_std_max=config.log_std_max,
            mean_bound=config.mean_bound,
        )
        delta_optimizer = tf.keras.optimizers.Adam(config.delta_lr) if config.auto_delta else None
        return ERASacAgent(
            actor_network=actor,
            delta_optimizer=delta_optimizer,
            entropy_samples=config.entropy_samples,
            executed_target_entropy=executed_target(config, action_dim),
            **common_kwargs,
        )
    actor = networks.sac_actor_network(
        observation_spec, action_spec, config.hidden_sizes, activation=config.activation
    )
    return SacAgent(
        actor_network=actor,
        alpha_optimizer=tf.keras.optimizers.Adam(config.alpha_lr),
        target_entropy=config.sac_target_entropy_per_dim * action_dim,
        initial_log_alpha=config.initial_log_alpha,
        **common_kwargs,
    )
