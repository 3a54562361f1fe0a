"""Scoring policies in the simulator: the seeded rollout evaluator with its worker pool (rollout), the media it
writes for people (media), the agent-to-policy adapter (agent_policy), success-rate intervals (success_stats) and the
table over a sweep's training seeds (sweeps).

Nothing is imported here: importing the simulator fixes the MuJoCo GL backend, which training without rollouts
never needs.
"""
