"""check: the quality gate for compressed-tensors checkpoints (`llmpress check`, and the end of every compress).

    from llmpress.check import CheckConfig, check
    report = check(CheckConfig("out/w4a16", base="default"))
    print(report.to_markdown())
"""
from .run import KL_LIMITS, CheckConfig, CheckError, CheckFailed, CheckReport, Finding, check, set_aside, write_report

__all__ = ["KL_LIMITS", "CheckConfig", "CheckError", "CheckFailed", "CheckReport", "Finding", "check", "set_aside",
           "write_report"]
