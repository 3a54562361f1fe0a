"""RoboIMI visuomotor imitation policies: data, models, agents and training."""
