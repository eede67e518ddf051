import numpy as np
import pytest
import tensorflow as tf
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import time_step as ts

from pipelines.sac import networks
from pipelines.sac.agent import ERASacAgent, SacAgent, make_agent
from pipelines.sac.config import SacConfig

OBS_SPEC = tensor_spec.TensorSpec((4,), tf.float32)
ACTION_SPEC = tensor_spec.BoundedTensorSpec((2,), tf.float32, -1.0, 1.0)
TIME_STEP_SPEC = ts.time_step_spec(OBS_SPEC)


def tiny_config(**overrides):
    return SacConfig(**{"hidden_sizes": (16, 16), "batch_size": 32, **overrides})


def transitions(agent, batch_size=32, scale=1.0, seed=0):
    tf.random.set_seed(seed)
    batch = tensor_spec.sample_spec_nest(
        agent.data_context.transition_spec, outer_dims=(batch_size,)
    )
    observation = tf.random.stateless_normal((batch_size, 4), seed=(seed, 1)) * scale
    mid = ts.transition(observation, tf.zeros(batch_size), tf.ones(batch_size))
    return batch._replace(
        time_step=mid,
        next_time_step=ts.transition(observation + 0.1, tf.ones(batch_size), tf.ones(batch_size)),
        action_step=batch.action_step._replace(action=tf.clip_by_value(batch.action_step.action, -1, 1)),
    )


def executed_entropy(agent, batch, samples=256):
    distribution = agent.policy.distribution(batch.time_step).action
    return float(tf.reduce_mean(networks.executed_entropy(distribution, samples)))


def test_standard_sac_settings_are_explicit():
    agent = make_agent(tiny_config(agent="sac"), TIME_STEP_SPEC, ACTION_SPEC)
    assert isinstance(agent, SacAgent) and not isinstance(agent, ERASacAgent)
    assert agent._gamma == 0.99 and agent._target_update_tau == 0.005
    assert agent.target_entropy == -2.0
    assert isinstance(agent._critic_optimizer, tf.keras.optimizers.AdamW)


@pytest.mark.parametrize("squash", ["tanh", "truncated"])
def test_era_losses_have_no_entropy_terms(squash):
    agent = make_agent(tiny_config(squash=squash), TIME_STEP_SPEC, ACTION_SPEC)
    batch = transitions(agent)
    losses = []
    for log_alpha in (-5.0, 5.0):
        agent._log_alpha.assign(log_alpha)
        tf.random.set_seed(7)
        critic = agent.critic_loss(batch.time_step, batch.action_step.action, batch.next_time_step)
        actor = agent.actor_loss(batch.time_step)
        losses.append((float(critic), float(actor)))
    assert losses[0] == losses[1]

    # Standard SAC, same check: its losses do depend on alpha, so the check can fail.
    sac = make_agent(tiny_config(agent="sac"), TIME_STEP_SPEC, ACTION_SPEC)
    values = []
    for log_alpha in (-5.0, 5.0):
        sac._log_alpha.assign(log_alpha)
        tf.random.set_seed(7)
        values.append(float(sac.actor_loss(batch.time_step)))
    assert values[0] != values[1]


def test_era_actor_loss_is_minus_min_q():
    agent = make_agent(tiny_config(), TIME_STEP_SPEC, ACTION_SPEC)
    batch = transitions(agent)
    tf.random.set_seed(3)
    loss, entropy = agent.actor_loss_and_entropy(batch.time_step)
    tf.random.set_seed(3)
    actions = agent._train_policy.distribution(batch.time_step).action.sample()
    q1, _ = agent._critic_network_1((batch.time_step.observation, actions))
    q2, _ = agent._critic_network_2((batch.time_step.observation, actions))
    assert float(loss) == pytest.approx(-float(tf.reduce_mean(tf.minimum(q1, q2))), rel=1e-5)
    assert entropy.shape == (32,)


@pytest.mark.parametrize(
    "squash,initial_delta,scale",
    [("tanh", 0.0, 2.0), ("tanh", 2.0, 0.1), ("truncated", 0.0, 8.0)],
)
def test_auto_delta_moves_executed_entropy_to_its_target(squash, initial_delta, scale):
    # Actor and critic frozen (lr 0): only delta moves, so any change in the executed
    # policy's entropy is delta's doing.
    config = tiny_config(squash=squash, delta=initial_delta, delta_lr=0.1,
                         actor_lr=0.0, critic_lr=0.0)
    agent = make_agent(config, TIME_STEP_SPEC, ACTION_SPEC)
    batch = transitions(agent, scale=scale)
    target = agent.target_entropy
    tf.random.set_seed(0)
    gap_before = executed_entropy(agent, batch) - target
    train = tf.function(agent.train)
    for _ in range(150):
        info = train(batch)
    gap_after = executed_entropy(agent, batch) - target
    assert abs(gap_before) > 0.3
    assert abs(gap_after) < 0.25 * abs(gap_before)
    moved = float(agent.delta) - initial_delta
    assert np.sign(moved) == -np.sign(gap_before)
    assert float(info.extra.delta) == pytest.approx(float(agent.delta))
    assert float(agent.delta) >= 0.0


def test_constant_delta_does_not_move():
    agent = make_agent(tiny_config(delta=0.5, auto_delta=False), TIME_STEP_SPEC, ACTION_SPEC)
    batch = transitions(agent)
    for _ in range(3):
        agent.train(batch)
    assert float(agent.delta) == 0.5
    assert int(agent.train_step_counter) == 3


def test_era_agent_needs_an_era_actor():
    sac_actor = networks.sac_actor_network(OBS_SPEC, ACTION_SPEC, (8,))
    critic = networks.CriticNetwork((OBS_SPEC, ACTION_SPEC), (8,))
    with pytest.raises(ValueError, match="ERAProjectionNetwork"):
        ERASacAgent(TIME_STEP_SPEC, ACTION_SPEC, critic, sac_actor,
                    tf.keras.optimizers.Adam(), tf.keras.optimizers.Adam())
