"""One step's batch of groups: prompts, rollouts, rewards, dynamic sampling, advantages.

`GroupSampler.sample(step)` draws `prompts_per_step` training prompts, samples
`group_size` completions of each (`rollout.RolloutGenerator`), rewards them (+ DAPO's
overlong penalty when asked) and turns the rewards into advantages within each group.
Everything is seeded by (seed, step[, round]), so a step sampled again after a kill draws
the same prompts and completions.

With dynamic sampling (DAPO), groups whose task rewards are all equal carry no signal and
are dropped; further rounds are sampled until `prompts_per_step` groups remain or
`max_sampling_rounds` ran, and the batch is then filled up with dropped groups (advantage
0), so its shape never changes.
"""

import dataclasses

import numpy as np

from pipelines.grpo.loss import group_advantages
from pipelines.grpo.processes import process_share, sum_over_processes
from pipelines.grpo.rewards import overlong_penalty
from pipelines.grpo.rollout import Rollout


@dataclasses.dataclass
class GroupBatch:
    """A step's groups, `group_size` consecutive rows each."""

    rollout: Rollout
    rewards: np.ndarray  # task rewards + overlong penalty: what the advantages come from
    task_rewards: np.ndarray
    advantages: np.ndarray
    stats: dict  # how it was sampled: rounds, share of groups dropped, mean penalty


class GroupSampler:
    """Samples and scores the groups of each step (see the module docstring)."""

    def __init__(self, config, problems, generator, reward_fns):
        self.config = config
        self.problems = problems
        self.generator = generator
        self.reward_fns = reward_fns

    def prompts(self, step, sampling_round=1):
        """The problems of one sampling round of `step`, seeded by (seed, step[, round])."""
        c = self.config
        key = [c.seed, step] + ([sampling_round] if sampling_round > 1 else [])
        rng = np.random.default_rng(key)
        picks = rng.choice(len(self.problems), c.prompts_per_step,
                           replace=len(self.problems) < c.prompts_per_step)
        return [self.problems[i] for i in picks]

    def groups(self, step, sampling_round=1):
        """(rollout, task rewards) of `prompts_per_step` groups of `group_size` samples."""
        c = self.config
        grouped = [p for p in self.prompts(step, sampling_round) for _ in range(c.group_size)]
        rollout = self.generator.generate([p.prompt for p in grouped], "train",
                                          seed=c.seed * 1_000_003 + step,
                                          stream=sampling_round - 1)
        # Across processes, each scores its own share of the rows and the shares are
        # summed: every process then holds every group's rewards (see processes.py).
        rewards = np.zeros(len(grouped), "float32")
        share = process_share(len(grouped))
        rewards[share] = [self.reward_fns[p.reward](text, p.reference)
                          for p, text in zip(grouped[share], rollout.completions[share])]
        return rollout, sum_over_processes(rewards)

    def sample(self, step):
        """The `GroupBatch` of `step`."""
        c = self.config
        rounds = c.max_sampling_rounds if c.dynamic_sampling else 1
        kept, dropped, sampled_groups = [], [], 0
        for sampling_round in range(1, rounds + 1):
            rollout, rewards = self.groups(step, sampling_round)
            for g in range(c.prompts_per_step):
                rows = list(range(g * c.group_size, (g + 1) * c.group_size))
                group = (rollout.select(rows), rewards[rows])
                no_signal = np.all(group[1] == group[1][0])
                (dropped if c.dynamic_sampling and no_signal else kept).append(group)
            sampled_groups += c.prompts_per_step
            if len(kept) >= c.prompts_per_step:
                break
        groups = (kept + dropped)[: c.prompts_per_step]
        rollout = Rollout.concatenate([g[0] for g in groups])
        task_rewards = np.concatenate([g[1] for g in groups])
        penalty = overlong_penalty(rollout.response_lengths, c.max_new_tokens,
                                   c.overlong_buffer_len, c.overlong_penalty_factor)
        rewards = task_rewards + penalty
        return GroupBatch(
            rollout=rollout, rewards=rewards, task_rewards=task_rewards,
            advantages=group_advantages(rewards, c.group_size, c.scale_rewards),
            stats={"sampling_rounds": sampling_round,
                   "share_groups_dropped": len(dropped) / sampled_groups,
                   "overlong_penalty": penalty.mean()})

