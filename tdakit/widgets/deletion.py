"""The what-if deletion explorer: pick a query, see the points a method blames, delete them, retrain, and
compare each method's predicted change with the actual one (docs/widgets.md).

Every control has a headless twin that does what the click does (``select_query``, ``click``, ``delete``,
``delete_picked``, ``undo``), so notebooks and tests drive the explorer without a browser. Slow work
(scores, retraining) runs on background workers (``Background``): the controls stay live, a new request
supersedes a running one, and repeated deletions come from ``WhatIf``'s cache.
"""

from __future__ import annotations

import html
import re

import ipywidgets as W
from ipyevents import Event
from IPython.display import display

from .. import deprecation
from ..datasets import Dataset
from ..errors import SettingError, TdakitError
from ..explore.whatif import SIDES, Trial, WhatIf
from ..task import Classification
from . import views
from .background import Background, Job


class DeletionExplorer:
    """Widgets around a ``WhatIf`` (see the module docstring). ``data`` (the Dataset the run was trained
    on) supplies feature names, original units and image shapes; without it values show as stored.

    threaded=False runs every request at once on the caller's thread (tests, headless use)."""

    def __init__(self, whatif: WhatIf, data: Dataset | None = None, k: int = 10, protocol: str = "fresh",
                 method: str | None = None, query: int = 0, threaded: bool = True, kind: str | None = None):
        if kind is not None:
            deprecation.warn("DeletionExplorer(kind=...)", "DeletionExplorer(protocol=...)")
            protocol = kind
        self.whatif = whatif
        self.data = data
        run = whatif.run
        self.units = views.units_of(run.task, data)
        self.images = views.is_images(data, run.train)
        self.text = views.is_text(data)
        self._texts = {"train": data.texts(run.train.x), "query": data.texts(whatif.query.x)} if self.text else {}
        self.last: Trial | None = None
        self.blamed_points: tuple[list[int], list[int]] = ([], [])
        self._show = Background(threaded)
        self._work = Background(threaded, on_busy=self._busy)
        self._query_outputs = run.model(run.final, whatif.query.to(run.final.dtype).x).detach()

        self._make_controls(k, protocol, method, query)
        self._make_displays()
        self._connect()
        self.view = self._layout()
        self._draw_picker()
        self._draw_trials()
        self._refresh()

    def _make_controls(self, k: int, protocol: str, method: str | None, query: int) -> None:
        whatif, run = self.whatif, self.whatif.run
        self.query = W.Dropdown(options=[(self._query_text(i), i) for i in range(len(whatif.query))], value=query,
                                description="query", layout=W.Layout(width="330px"))
        self.method = W.Dropdown(options=list(whatif.methods), value=method or whatif.available[0],
                                 description="method", layout=W.Layout(width="300px"))
        self.k = W.BoundedIntText(value=k, min=0, max=run.num_train + 10, description="k",
                                  layout=W.Layout(width="140px"))
        self.side = W.ToggleButtons(options=[("most helpful", "helpful"), ("most harmful", "harmful")],
                                    value="helpful", description="delete", style={"button_width": "130px"})
        self.protocol = W.ToggleButtons(options=[("fresh seeds", "fresh"), ("same trajectory", "same")], value=protocol,
                                    description="retrain", style={"button_width": "135px"},
                                    tooltips=["R new initialisations and batch orders: the expected effect (LDS)",
                                              "the recorded initialisation and batch order, deleted weights 0: "
                                              "what exact unrolling predicts"])
        self.delete_button = W.Button(description="Delete top k", button_style="danger", icon="trash")
        self.picked = W.Text(placeholder="e.g. 3, 17, 42", description="by hand", layout=W.Layout(width="300px"))
        self.picked_button = W.Button(description="Delete these", icon="hand-pointer-o")
        self.undo_button = W.Button(description="Undo", icon="undo")
        self.status = W.HTML(views.info_html("Pick a query and a method, then press Delete."))
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, description="", bar_style="info",
                                        layout=W.Layout(width="200px", visibility="hidden"))

    def _make_displays(self) -> None:
        self.picker_image = W.Image(format="png", layout=W.Layout(max_width="460px", height="auto",
                                                                  object_fit="contain"))
        self.points_view = W.HTML()
        self.points_image = W.Image(format="png", layout=W.Layout(max_width="640px", height="auto", display="none"))
        self.result = W.HTML()
        self.trials_image = W.Image(format="png", layout=W.Layout(max_width="480px", height="auto",
                                                                  object_fit="contain"))
        self._picker: views.Picker | None = None
        for name, widget in (("query", self.query), ("method", self.method), ("k", self.k), ("kind", self.protocol),
                             ("delete", self.delete_button), ("picked", self.picked), ("undo", self.undo_button),
                             ("status", self.status), ("result", self.result), ("picker", self.picker_image)):
            widget.add_class(f"tdakit-{name}")  # stable handles for the browser test and for styling

    def _connect(self) -> None:
        self.query.observe(lambda change: (self._draw_picker(), self._refresh()), names="value")
        self.method.observe(lambda change: self._refresh(), names="value")
        self.k.observe(lambda change: self._refresh(), names="value")
        self.side.observe(lambda change: self._refresh(), names="value")
        self.delete_button.on_click(lambda _: self.delete())
        self.picked_button.on_click(lambda _: self.delete_picked())
        self.undo_button.on_click(lambda _: self.undo())
        self._clicks = Event(source=self.picker_image, watched_events=["click"])
        self._clicks.on_dom_event(self._on_click)

    def _layout(self) -> W.VBox:
        return W.VBox([
            W.HBox([self.query, self.method, self.k]),
            W.HBox([self.side, self.protocol]),
            W.HBox([self.delete_button, self.picked, self.picked_button, self.undo_button]),
            W.HBox([self.progress, self.status]),
            W.HBox([self.picker_image, W.VBox([self.points_view, self.points_image])],
                   layout=W.Layout(align_items="flex-start")),
            W.HBox([self.trials_image, self.result], layout=W.Layout(align_items="flex-start")),
        ])

    def _ipython_display_(self):
        display(self.view)

    # -- what the controls do (headless twins) ----------------------------------------------------------
    def select_query(self, query: int) -> None:
        """Choose a query (as picking it from the list does)."""
        if not isinstance(query, int) or isinstance(query, bool) or not 0 <= query < len(self.whatif.query):
            self._error(f"query must be an index in 0..{len(self.whatif.query) - 1}, got {query!r}")
            return
        self.query.value = query

    def click(self, x: float, y: float, shown_width: float | None = None, shown_height: float | None = None) -> None:
        """A click at (x, y) pixels on the picture of the queries: picks the query under it."""
        hit = self._picker.query_at(x, y, shown_width, shown_height) if self._picker else None
        if hit is None:
            self.status.value = views.info_html("No query there: click on a point (or an image).")
        else:
            self.select_query(hit)

    def delete(self, query: int | None = None, method: str | None = None, k: int | None = None,
               side: str | None = None, protocol: str | None = None, kind: str | None = None) -> None:
        """Press "Delete top k" (arguments set the controls first)."""
        self._set(query, method, k, side, _protocol(protocol, kind, "delete"))
        q, m, k, s, kd = self.query.value, self.method.value, self.k.value, self.side.value, self.protocol.value
        try:  # the quick checks here, so that a mistake is a message at once; scoring runs in the background
            self.whatif.check(method=m, k=k)
        except TdakitError as error:
            self._error(str(error))
            return

        self._start_deletion(q, kd, f"the {k} most {s} points by {m}", method=m, k=k, side=s)

    def delete_picked(self, points: str | list[int] | None = None, protocol: str | None = None,
                      kind: str | None = None) -> None:
        """Press "Delete these": the hand-picked points in the text box (or ``points``)."""
        if points is not None:
            self.picked.value = points if isinstance(points, str) else ", ".join(map(str, points))
        self._set(protocol=_protocol(protocol, kind, "delete_picked"))
        text = self.picked.value.strip()
        if not re.fullmatch(r"[\d,;\s]*", text):
            self._error(f"write training point numbers separated by commas, e.g. 3, 17, 42 (got {text!r})")
            return
        chosen = [int(t) for t in re.split(r"[,;\s]+", text) if t]
        q, kd = self.query.value, self.protocol.value
        try:
            chosen = self.whatif.choose(q, points=chosen)
        except TdakitError as error:
            self._error(str(error))
            return
        self._start_deletion(q, kd, f"{len(chosen)} points picked by hand", points=chosen)

    def undo(self) -> None:
        """Press "Undo": forget the last deletion."""
        try:
            gone = self.whatif.undo()
        except TdakitError as error:
            self._error(str(error))
            return
        self.last = self.whatif.history[-1] if self.whatif.history else None
        self.result.value = views.trial_html(self.last, self.units) if self.last else ""
        self.status.value = views.info_html(f"Undone: the deletion of {len(gone.points)} points for query "
                                            f"{gone.query}.")
        self._draw_trials()

    def wait(self, timeout: float | None = 600) -> bool:
        """Block until every running request is done (headless use); False on timeout."""
        return self._show.wait(timeout) and self._work.wait(timeout)

    @property
    def message(self) -> str:
        """The status line's text (an error, progress or what just happened)."""
        return re.sub(r"<[^>]+>", "", self.status.value).replace("⚠ ", "").strip()

    # -- internals ---------------------------------------------------------------------------------------
    def _set(self, query=None, method=None, k=None, side=None, protocol=None) -> None:
        if query is not None:
            self.select_query(query)
        if method is not None:
            self.method.value = method
        if k is not None:
            self.k.value = k
        if side is not None:
            if side not in SIDES:
                raise SettingError(f"side must be 'helpful' or 'harmful', got {side!r}")
            self.side.value = side
        if protocol is not None:
            self.protocol.value = protocol

    def _error(self, message: str) -> None:
        self.status.value = views.error_html(message)

    def _failed(self, error: BaseException) -> None:
        self.status.value = views.failure_html(error)

    def _busy(self, busy: bool) -> None:
        self.progress.layout.visibility = "visible" if busy else "hidden"
        if not busy:
            self.progress.value = 0.0

    def _on_click(self, event: dict) -> None:
        if "dataX" in event:
            self.click(event["dataX"], event["dataY"])
        else:
            self.click(event.get("relativeX", 0), event.get("relativeY", 0), event.get("boundingRectWidth"),
                       event.get("boundingRectHeight"))

    def _query_text(self, i: int) -> str:
        y = self.whatif.query.y[i]
        out = self._query_outputs[i]
        if self.text:
            sentence = self._texts["query"][i]
            if isinstance(self.whatif.run.task, Classification):
                return f"{i}: [{self._label(int(y))}, predicted {self._label(int(out.argmax()))}] {sentence}"
            return f"{i}: {sentence}"
        if isinstance(self.whatif.run.task, Classification):
            return f"{i}: label {int(y)}, predicted {int(out.argmax())}"
        scaler = self.data.scaler if self.data is not None else None
        value = (lambda v: scaler.to_original(float(v))) if scaler else float
        unit = f" {scaler.unit}" if scaler and scaler.unit else ""
        return f"{i}: true {value(y):.1f}{unit}, predicted {value(out[0]):.1f}{unit}"

    def _label(self, y: int) -> str:
        names = self.data.class_names if self.data is not None else ()
        return names[y] if y < len(names) else str(y)

    def _draw_picker(self) -> None:
        q = self.query.value
        query = self.whatif.query
        if self.text:
            self._picker = views.text_picker([self._query_text(i) for i in range(len(query))], q)
        elif self.images:
            labels = [str(int(v)) for v in query.y]
            self._picker = views.grid_picker(views.as_float_images(query, self.data.image_shape), labels, q)
        else:
            scaler = self.data.scaler if self.data is not None else None
            targets, predictions = query.y.double(), self._query_outputs[:, 0].double()
            if scaler is not None:
                targets, predictions = scaler.to_original(targets), scaler.to_original(predictions)
            self._picker = views.scatter_picker(targets, predictions, scaler.unit if scaler else "", q)
        self.picker_image.value = self._picker.png

    def _refresh(self) -> None:
        """Show the blamed points for the current query, method, k and side (off the UI thread)."""
        q, m, k = self.query.value, self.method.value, self.k.value
        try:
            self.whatif.check(method=m, k=k)
        except TdakitError as error:
            self._error(str(error))
            return

        def work(job: Job):
            self.status.value = views.info_html(f"Scoring the training points with {m} ...")
            helpful, harmful = self.whatif.blamed(q, m, k)
            job.checkpoint()
            return helpful, harmful, self.whatif.scores(m).values[q]

        self._show.submit(work, lambda got: self._show_points(q, m, *got), self._failed)

    def _show_points(self, q: int, m: str, helpful: list[int], harmful: list[int], row) -> None:
        self.blamed_points = (helpful, harmful)
        run = self.whatif.run
        if self.images:
            labels = [str(int(v)) for v in run.train.y]
            images = views.as_float_images(run.train, self.data.image_shape)
            query_image = views.as_float_images(self.whatif.query, self.data.image_shape)[q]
            self.points_image.value = views.points_images(images, labels, helpful, harmful, query_image,
                                                          str(int(self.whatif.query.y[q])))
            self.points_image.layout.display = None
            self.points_view.value = (f"<b>{m}</b>: the {len(helpful)} most helpful and most harmful training "
                                      f"images for query {q} (label in brackets)")
        elif self.text:
            labels = ([self._label(int(v)) for v in run.train.y] if isinstance(run.task, Classification)
                      else None)
            texts = self._texts["train"]
            self.points_view.value = (
                f"<div class='tdakit-query-text'><b>query {q}</b>: <span style='font-family:monospace'>"
                f"{html.escape(self._texts['query'][q])}</span></div>"
                + views.sentences_table(texts, labels, helpful, row, self.units,
                                        f"{m}: most helpful for query {q} (deleting them is predicted to hurt it)")
                + views.sentences_table(texts, labels, harmful, row, self.units, f"{m}: most harmful for query {q}"))
        else:
            self.points_view.value = (
                views.points_table(self.data, run.train, helpful, row, self.units,
                                   f"{m}: most helpful for query {q} (deleting them is predicted to hurt it)")
                + views.points_table(self.data, run.train, harmful, row, self.units,
                                     f"{m}: most harmful for query {q}"))
        if not self._work.busy:
            self.status.value = views.info_html(f"Query {q}: press Delete to retrain without the "
                                                f"{self.side.value} points.")

    def _start_deletion(self, query: int, protocol: str, what: str, **selection) -> None:
        """Delete ``selection`` (method=, k=, side= or points=, as ``WhatIf.delete`` takes them) for ``query`` on
        the deletion worker; naming a method's points may need its scores, so that runs there too."""
        wi = self.whatif
        how = (f"retraining {wi.seeds} models on fresh seeds" if protocol == "fresh" else
               "rerunning the same trajectory")
        self.status.value = views.info_html(f"Deleting {what}: {how} ...")
        self.progress.value = 0.0

        def work(job: Job):
            chosen = wi.choose(query, **selection)  # for the progress bar's total (scores are computed once)
            job.checkpoint()
            todo = 0 if wi.is_cached(chosen, protocol) else (wi.seeds if protocol == "fresh" else 1) * (
                1 if wi.is_cached([], protocol) else 2)
            done = [0.0, 0.0]

            def on_step(models: float) -> None:
                job.checkpoint()
                done[0] += models
                fraction = done[0] / max(todo, 1)  # on_step hands models / T per step
                if fraction - done[1] >= 0.02:  # a few dozen updates, not one per step
                    done[1] = fraction
                    self.progress.value = min(fraction, 1.0)
            return wi.delete(query, protocol=protocol, on_step=on_step, **selection)

        self._work.submit(work, self._show_trial, self._failed)

    def _show_trial(self, trial: Trial) -> None:
        self.last = trial
        self.result.value = views.trial_html(trial, self.units)
        self.status.value = views.info_html(
            f"Query {trial.query}: actual change {self.units.text(trial.actual)} after deleting "
            f"{len(trial.points)} points ({trial.seconds:.1f} s).")
        self._draw_trials()

    def _draw_trials(self) -> None:
        self.trials_image.value = views.trials_plot(self.whatif.history, self.units, self.whatif.available)


def _protocol(protocol: str | None, kind: str | None, method: str) -> str | None:
    """``protocol=``, or tdakit 0.2's ``kind=`` with a warning."""
    if kind is None:
        return protocol
    deprecation.warn(f"DeletionExplorer.{method}(kind=...)", f"DeletionExplorer.{method}(protocol=...)")
    return kind
