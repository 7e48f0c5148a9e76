# What the benchmark report scripts share: reading the KEY=VALUE files the shell scripts write.
"""Shared helpers of bench/report.py and bench/gateway_report.py."""

import os
import shlex


def read_env(path):
    env = {}
    if not os.path.exists(path):
        return env
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            try:
                parts = shlex.split(value)
                env[key] = " ".join(parts) if parts else ""
            except ValueError:
                env[key] = value
    return env
