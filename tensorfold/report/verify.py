"""The report of `verify`: two models run on the same inputs, every output compared."""

from __future__ import annotations

from rich.console import Console

from tensorfold.report.base import Report


class VerifyReport(Report):
    @property
    def broken(self) -> list[str]:
        """Outputs that are NaN/Inf in the candidate where the reference's are finite."""
        return list(self.get("broken") or [])

    def render(self, console: Console) -> None:
        console.print(f"onnx.checker: {self['checker']}; inputs: {self['inputs']}")
        for o in self["outputs"]:
            if o["kind"] == "float":
                argmax = "" if o["argmax_agreement"] is None else f", argmax {o['argmax_agreement']:.2%} agree"
                console.print(
                    f"{o['name']}: relative error {o['relative_error']:.3e}, max abs {o['max_abs_error']:.3e}{argmax}"
                )
            else:
                console.print(f"{o['name']}: {o['agreement']:.2%} of elements equal")
            if o.get("shape_changes"):
                console.print(
                    f"  {o['name']}: its shape changed on {o['shape_changes']} call(s) (a decoder that "
                    "stopped at another step): those calls count as wholly different"
                )
