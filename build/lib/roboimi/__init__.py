"""RoboIMI: visuomotor imitation policies for dual-arm manipulation, with a built-in MuJoCo simulation."""
