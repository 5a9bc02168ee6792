"""Running a runbook: discovery and typed parameters, the kernel, the launcher, interactive runs and
their seal, the ``Session`` that runbook cells call, the step log and progress lines.
"""
