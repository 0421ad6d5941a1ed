"""A report per command, data apart from rendering: each is a dataclass of typed fields, with
`as_dict()` (its JSON object) and `render(console)` (for a terminal), so the CLI only chooses
between the two."""

from tensorfold.report.base import Report, make_console
from tensorfold.report.inspect import InspectReport
from tensorfold.report.optimize import OptimizeReport
from tensorfold.report.pipeline import PipelineReport
from tensorfold.report.profile import ProfileReport
from tensorfold.report.recover import RecoverReport
from tensorfold.report.search import NasReport, RankSearchReport
from tensorfold.report.verify import VerifyReport

__all__ = [
    "InspectReport",
    "NasReport",
    "OptimizeReport",
    "PipelineReport",
    "ProfileReport",
    "RankSearchReport",
    "RecoverReport",
    "Report",
    "VerifyReport",
    "make_console",
]
