"""The report of `verify`: two models run on the same inputs, every output compared."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

from tensorfold.graph.verify import Verification
from tensorfold.report.base import Report


@dataclass
class VerifyReport(Verification, Report):
    """The verification itself (checker, inputs, outputs, the maxima, `broken`: outputs NaN/Inf in the
    candidate where the reference's are finite); its as_dict is the JSON."""

    @classmethod
    def of(cls, verification: Verification) -> VerifyReport:
        return cls(verification.checker, verification.inputs, verification.outputs)

    def render(self, console: Console) -> None:
        console.print(f"onnx.checker: {self.checker}; inputs: {self.inputs}")
        for o in self.outputs:
            if o.kind == "float":
                argmax = "" if o.argmax_agreement is None else f", argmax {o.argmax_agreement:.2%} agree"
                console.print(f"{o.name}: relative error {o.relative_error:.3e}, max abs {o.max_abs_error:.3e}{argmax}")
                if notes := o.channel_notes():
                    console.print(f"  {notes}")
            else:
                console.print(f"{o.name}: {o.agreement:.2%} of elements equal")
            if o.shape_changes:
                console.print(
                    f"  {o.name}: its shape changed on {o.shape_changes} call(s) (a decoder that "
                    "stopped at another step): those calls count as wholly different"
                )
