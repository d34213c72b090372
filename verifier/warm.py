"""Imported once in the scoring pool's forkserver: loads math-verify and warms sympy's caches
so every forked worker starts ready (a cold first parse costs ~100 ms), and reads the installed
reward plugins once so no worker scans package metadata inside a job's time limit."""

from verifier.rewards import math_reward, plugins

math_reward("<think></think> \\boxed{\\frac{1}{2}}", "0.5", True)
math_reward("<think></think> \\boxed{(1,2]}", "(1,2]", True)
plugins()
