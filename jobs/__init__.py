"""Entry points: each job declares its stages and config, runs the plan and writes a summary.

Run as ``wspsr <job>`` or ``python -m jobs.<job>`` (what ``ray job submit`` runs). Nothing imports this package.
"""
