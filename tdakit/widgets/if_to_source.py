"""The IF-to-SOURCE explorer: sliders for the number of segments, the horizon eta*K (as a multiple of the
run's) and the influence damping; it redraws the two methods' eigenvalue functions over the run's real
spectrum, both methods' scores against exact unrolling for one query, and their LDS against a ground truth.
A fourth slider refines EK-FAC's influence at the same damping toward the exact solve (``Spectrum.refinement``):
the residual curve, the LDS by iteration and the agreement with the exact solve.

Headless twin: ``set(segments=, horizon=, damping=, query=, iterations=)`` moves the sliders; ``numbers`` holds
what the page prints. Work runs off the UI thread (``Background``), the newest slider position wins.
"""

from __future__ import annotations

import html
import math

import ipywidgets as W
import torch
from IPython.display import display

from .. import plots
from ..evaluation.metrics import spearman
from ..explore.spectrum import Refinement, Spectrum, View
from . import views
from .background import Background, Job


class IFToSourceExplorer:
    """Widgets around a ``Spectrum`` (see the module docstring). units: how to show scores."""

    def __init__(self, spectrum: Spectrum, query: int = 0, segments: int | None = None,
                 units: views.Units | None = None, threaded: bool = True):
        self.spectrum = spectrum
        self.units = units or views.Units()
        self.current: View | None = None
        self.refined: Refinement | None = None  # the refinement at the current damping (iterations > 0)
        implied = spectrum.implied_damping
        self.segments = W.IntSlider(value=segments or spectrum.max_segments, min=1, max=spectrum.max_segments,
                                    description="segments L",
                                    continuous_update=False, style={"description_width": "110px"})
        self.horizon = W.FloatLogSlider(value=1.0, base=10, min=-3, max=6, step=0.25, description="eta K x",
                                        continuous_update=False, readout_format=".3g",
                                        style={"description_width": "110px"})
        low = math.floor(math.log10(implied)) - 3
        self.damping = W.FloatLogSlider(value=implied, base=10, min=low, max=low + 6, step=0.25,
                                        description="IF damping", continuous_update=False, readout_format=".2e",
                                        style={"description_width": "110px"})
        recorded = sorted(spectrum.refine_settings.record) or [0, spectrum.refine_settings.iterations]
        self.iterations = W.IntSlider(value=0, min=0, max=spectrum.refine_settings.iterations,
                                      step=max(recorded[1] - recorded[0], 1) if len(recorded) > 1 else 1,
                                      description="refine EK-FAC", continuous_update=False,
                                      style={"description_width": "110px"})
        self.query = W.BoundedIntText(value=query, min=0, max=len(spectrum.query) - 1, description="query",
                                      layout=W.Layout(width="160px"))
        self.status = W.HTML(views.info_html("Move a slider."))
        self.progress = W.FloatProgress(value=1.0, min=0.0, max=1.0, bar_style="info",
                                        layout=W.Layout(width="120px", visibility="hidden"))
        self.figure = W.Image(format="png", layout=W.Layout(max_width="980px"))
        self.table = W.HTML()
        self._worker = Background(threaded, on_busy=self._busy)
        for name, widget in (("segments", self.segments), ("horizon", self.horizon), ("damping", self.damping),
                             ("iterations", self.iterations), ("spectrum-query", self.query),
                             ("spectrum-status", self.status), ("spectrum-table", self.table)):
            widget.add_class(f"tdakit-{name}")
        for control in (self.segments, self.horizon, self.damping, self.iterations, self.query):
            control.observe(lambda change: self._update(), names="value")
        self.view = W.VBox([W.HBox([W.VBox([self.segments, self.horizon, self.damping, self.iterations]),
                                    W.VBox([self.query, W.HBox([self.progress, self.status]), self.table])]),
                            self.figure])
        self._update()

    def _ipython_display_(self):
        display(self.view)

    def set(self, segments: int | None = None, horizon: float | None = None, damping: float | None = None,
            query: int | None = None, iterations: int | None = None) -> None:
        """Move the sliders (what dragging them does)."""
        for control, value in ((self.segments, segments), (self.horizon, horizon), (self.damping, damping),
                               (self.iterations, iterations), (self.query, query)):
            if value is not None:
                control.value = value

    def wait(self, timeout: float | None = 600) -> bool:
        return self._worker.wait(timeout)

    @property
    def numbers(self) -> dict[str, float | None]:
        """What the page prints for the current setting: LDS and agreement with exact unrolling."""
        v = self.current
        if v is None:
            return {}
        out = {"segments": v.segments, "horizon": v.horizon, "damping": v.damping,
               "lds_source": v.lds_source.value if v.lds_source else None,
               "lds_influence": v.lds_influence.value if v.lds_influence else None,
               "agreement_source": v.agreement_source, "agreement_influence": v.agreement_influence,
               "iterations": 0, "lds_refined": None, "agreement_refined": None, "residual": None}
        r = self.refined
        if r is not None:
            t = r.at(self.iterations.value)
            out.update(iterations=t, lds_refined=r.lds[t].value if r.lds[t] else None,
                       agreement_refined=r.agreement[t], residual=r.residuals[min(t, len(r.residuals) - 1)])
        return out

    # -- internals ---------------------------------------------------------------------------------------
    def _busy(self, busy: bool) -> None:
        self.progress.layout.visibility = "visible" if busy else "hidden"

    def _update(self) -> None:
        L, c, d, q = self.segments.value, self.horizon.value, self.damping.value, self.query.value
        t = self.iterations.value
        self.status.value = views.info_html(f"Computing L = {L}, eta K x {c:.3g}, damping {d:.2e}"
                                            + (f", refining EK-FAC ({t} iterations)" if t else "") + " ...")

        def work(job: Job):
            view = self.spectrum.view(L, c, d)
            job.checkpoint()
            refined = self.spectrum.refinement(d) if t else None
            job.checkpoint()
            return view, refined, self._draw(view, q, refined, t)

        self._worker.submit(work, self._show, self._failed)

    def _failed(self, error: BaseException) -> None:
        self.status.value = views.failure_html(error)

    def _show(self, got) -> None:
        view, refined, png = got
        self.current, self.refined = view, refined
        self.figure.value = png
        self.table.value = self._table(view)
        self.status.value = views.info_html(f"L = {view.segments}, eta K x {view.horizon:.3g}, damping "
                                            f"{view.damping:.2e}")

    def _table(self, v: View) -> str:
        def fmt(x):
            return "n/a" if x is None else f"{x:.3f}"
        lds_s = v.lds_source.value if v.lds_source else None
        lds_i = v.lds_influence.value if v.lds_influence else None
        return ("<table class='tdakit-spectrum' style='font-size:12px'><tr><th>method</th><th>LDS</th>"
                "<th>Spearman with exact unrolling</th></tr>"
                f"<tr><td>SOURCE (L={v.segments}, eta K x {v.horizon:.3g})</td><td class='tdakit-lds-source'>"
                f"{fmt(lds_s)}</td><td>{fmt(v.agreement_source)}</td></tr>"
                f"<tr><td>influence (damping {html.escape(f'{v.damping:.2e}')})</td><td class='tdakit-lds-influence'>"
                f"{fmt(lds_i)}</td><td>{fmt(v.agreement_influence)}</td></tr>{self._refined_row()}</table>")

    def _refined_row(self) -> str:
        n = self.numbers
        if not n.get("iterations"):
            return ""
        rho = self.refined.scores[n["iterations"]] if self.refined else None
        agree = (f"{float(spearman(rho, self.spectrum.reference.double()).mean()):.3f}"
                 if rho is not None and self.spectrum.reference is not None else "n/a")
        lds_r = "n/a" if n["lds_refined"] is None else f"{n['lds_refined']:.3f}"
        return (f"<tr><td>influence, EK-FAC refined {n['iterations']} iterations (residual {n['residual']:.2f}, "
                f"Spearman with the exact solve {n['agreement_refined']:.3f})</td><td class='tdakit-lds-refined'>"
                f"{lds_r}</td><td>{agree}</td></tr>")

    def _draw(self, v: View, query: int, refined: Refinement | None = None, iterations: int = 0) -> bytes:
        sp = self.spectrum
        with plots.style():
            fig = views.new_figure(14.0 if refined else 9.6, 3.4)
            left, right, *third = fig.subplots(1, 3 if refined else 2)
            if refined:
                plots.refinement_curves(refined.residuals, {t: refined.lds[t].value for t in refined.iterations
                                                            if refined.lds[t] is not None},
                                        reference=v.lds_influence.value if v.lds_influence else None,
                                        at=refined.at(iterations), ax=third[0])
            values = sp.eigenvalues.double()
            values = values[values > 1e-9 * float(values.max())]  # the zero (or clipped) directions stay off a log axis
            s = torch.logspace(math.log10(float(values.min())) - 1, math.log10(float(values.max())) + 1, 300,
                               dtype=torch.float64)
            gains = {name: g.numpy() for name, g in sp.gains(v.segments, v.horizon, v.damping, s).items()}
            s, values = s.numpy(), values.numpy()
            left.loglog(s, gains["influence"], color=plots.color_of("influence"), label="influence 1/(s + damping)")
            left.loglog(s, gains["SOURCE"], color=plots.color_of("SOURCE"), ls="--",
                        label="SOURCE, last segment (1 - exp(-eta K s))/s")
            left.loglog(s, 1.0 / s, color="grey", ls=":", lw=0.8, label="1/s")
            low = float(min(gains["influence"].min(), gains["SOURCE"].min()))
            left.plot(values, [low] * len(values), "|", color="k", ms=8, alpha=0.4,
                      label="the run's eigenvalues")
            left.set_xlabel("curvature eigenvalue s")
            left.set_ylabel("gain per unit gradient")
            left.set_title(f"Eigenvalue functions (last segment's eta K = "
                           f"{v.horizon * sp.last_rate(v.segments):.3g})")
            left.legend(fontsize=7, loc="upper right")
            if sp.reference is not None:
                ref = sp.reference[query].double().numpy() * self.units.scale
                for name, values_q in (("influence", v.influence[query]), ("SOURCE", v.source[query])):
                    right.scatter(ref, values_q.double().numpy() * self.units.scale, s=6, alpha=0.5,
                                  color=plots.color_of(name), label=name)
                lo, hi = float(ref.min()), float(ref.max())
                right.plot([lo, hi], [lo, hi], color="k", lw=0.7, ls="--", label="y = x")
                suffix = f" ({self.units.unit})" if self.units.unit else ""
                right.set_xlabel(f"exact unrolling score{suffix}")
                right.set_ylabel(f"score{suffix}")
                right.set_title(f"Query {query}: scores against exact unrolling")
                right.legend(fontsize=7)
                right.ticklabel_format(style="sci", scilimits=(-2, 3))
            else:
                right.set_axis_off()
            return views.to_png(fig)
