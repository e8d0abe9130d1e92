"""Job dialogs built by magicgui from the engine's own dataclass configs (TrainConfig,
HarvestConfig, FeaturesConfig): the CLI flags, config files and these forms share one source.
The Analyse menu opens them; OK starts the job (training in a child process, the others in
worker threads) and the Jobs panel shows it.

`config_form` turns chosen fields into magicgui widgets (help text as tooltips); `ConfigDialog`
checks the values, first by the config's own `__post_init__`, then with `check` (paths exist,
hookpoints exist in the model), and shows what is wrong in the dialog instead of starting.
"""

from __future__ import annotations

import dataclasses
import typing
from functools import partial
from pathlib import Path

from magicgui.widgets import Container, LineEdit, create_widget
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QVBoxLayout

from biollm_engine.errors import BioLLMError

TRAIN_FIELDS = ("model", "data", "out", "hookpoint", "kind", "activation", "latents", "k",
                "tokens", "batch_size", "device", "checkpoint_every", "log_every")
HARVEST_FIELDS = ("model", "data", "out", "hookpoints", "top_k", "window", "stride",
                  "reverse_complement", "batch_size", "max_tokens", "genes_only", "store_dtype",
                  "device")
FEATURE_FIELDS = ("model", "data", "dict", "obs_key", "top_n", "min_gene_count", "top_k",
                  "batch_size", "device")
NUMBER_MAX = 2**31 - 1


def _optional(tp) -> tuple[object, bool]:
    """(the type inside `X | None`, whether None is allowed)."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def config_form(cls, fields=None, values: dict | None = None) -> Container:
    """A magicgui Container with one widget per dataclass field, in the order of `fields` (all,
    in class order, by default); lists as comma-separated text, optional numbers as 0 = unset."""
    hints = typing.get_type_hints(cls)
    values = values or {}
    widgets = []
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for f in (by_name.values() if fields is None else (by_name[n] for n in fields)):
        default = values.get(f.name, f.default if f.default is not dataclasses.MISSING
                             else f.default_factory() if f.default_factory
                             is not dataclasses.MISSING else None)
        tp, optional = _optional(hints[f.name])
        tip = f.metadata.get("help", "")
        if typing.get_origin(tp) is list:
            w = LineEdit(name=f.name, value=", ".join(map(str, default or [])),
                         tooltip=f"{tip} (comma-separated)")
        elif tp in (int, float):
            w = create_widget(value=default or 0, annotation=tp, name=f.name,
                              options={"max": NUMBER_MAX, "min": 0, "tooltip": tip
                                       + (" (0: default)" if optional else "")})
        else:
            w = create_widget(value="" if default is None else default, annotation=tp,
                              name=f.name, options={"tooltip": tip})
        w.label = f.name.replace("_", " ")
        widgets.append(w)
    return Container(widgets=widgets)


def form_values(cls, form: Container) -> dict:
    hints = typing.get_type_hints(cls)
    out = {}
    for w in form:
        tp, optional = _optional(hints[w.name])
        v = w.value
        if typing.get_origin(tp) is list:
            v = [s.strip() for s in str(v).split(",") if s.strip()]
        elif optional and v in ("", 0, None):
            v = None
        out[w.name] = v
    return out


_HOOKPOINTS: dict[str, list[str]] = {}


def model_hookpoints(model: str) -> list[str]:
    """Hookpoint names of a model folder (loads it once; kept for the session)."""
    if model not in _HOOKPOINTS:
        from biollm_engine.models import load_model
        from biollm_engine.models.hookpoints import list_hookpoints

        _HOOKPOINTS[model] = [h.name for h in list_hookpoints(load_model(model, device="cpu"))]
    return _HOOKPOINTS[model]


def check_train(cfg) -> None:
    """What the trainer would reject only after loading everything, checked up front."""
    for name in ("model", "data", "cache"):
        p = getattr(cfg, name)
        if p and not Path(p).exists():
            raise BioLLMError(f"{name} {p} does not exist; choose an existing file or folder.")
    if cfg.latents is not None and cfg.latents < 1:
        raise BioLLMError("latents must be positive.")
    if cfg.k < 1:
        raise BioLLMError("k must be positive.")
    if cfg.latents is not None and cfg.k >= cfg.latents:
        raise BioLLMError(f"k ({cfg.k}) must be smaller than latents ({cfg.latents}).")
    if cfg.model and Path(cfg.model).is_dir():
        known = model_hookpoints(cfg.model)
        bad = [h for h in cfg.hookpoint if h not in known]
        if bad:
            raise BioLLMError(f"hookpoint {', '.join(bad)} is not in the model; choose one of "
                              f"{', '.join(known[:6])}, … ({len(known)} in all).")


class ConfigDialog(QDialog):
    """OK builds the config and checks it; on a problem the message shows and the dialog stays."""

    def __init__(self, cls, title: str, fields=None, values: dict | None = None, check=None,
                 parent=None, fixed: dict | None = None):
        """`fixed`: values of fields not shown (the workbench decides them)."""
        super().__init__(parent)
        self.setWindowTitle(title)
        self.cls, self.check, self.config = cls, check, None
        self.fixed = dict(fixed or {})
        self.form = config_form(cls, fields, values)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color:#b00020;")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.form.native)
        lay.addWidget(self.message)
        lay.addWidget(buttons)

    def validate(self):
        """The config, or None with the reason shown in the dialog."""
        try:
            cfg = self.cls(**{**self.fixed, **form_values(self.cls, self.form)})
            if self.check is not None:
                self.check(cfg)
        except BioLLMError as e:
            self.message.setText(e.message)
            return None
        except (TypeError, ValueError) as e:
            self.message.setText(str(e))
            return None
        self.message.setText("")
        return cfg

    def accept(self) -> None:
        self.config = self.validate()
        if self.config is not None:
            super().accept()


def train_dialog(workspace, parent=None) -> ConfigDialog:
    """TrainConfig's form, prefilled from the workspace: its model, first data set, a
    hookpoint in the middle of the model, and a small run that finishes on a CPU."""
    from biollm_engine.training.config import TrainConfig

    values = {"kind": "sae", "activation": "topk", "latents": 512, "k": 16, "tokens": 200_000,
              "batch_size": 1024, "device": "auto", "checkpoint_every": 100, "log_every": 5}
    if workspace.model:
        values["model"] = workspace.model
    if workspace.data:
        values["data"] = workspace.data[0]
    if workspace.folder is not None:
        values["out"] = str(Path(workspace.folder) / "dictionaries" / "trained")
    values["hookpoint"] = ["layers.1"]
    return ConfigDialog(TrainConfig, "Train dictionaries", TRAIN_FIELDS, values, check_train,
                        parent)


def harvest_dialog(workspace, data: str | None = None, parent=None) -> ConfigDialog:
    """`biollm harvest` as a form: the workspace's model, the open cells, a cache folder in the
    workspace."""
    from ..state.harvest import HarvestJob, check_harvest

    values = {"hookpoints": ["layers.1"], "device": "auto"}
    if workspace.model:
        values["model"] = workspace.model
    if data or workspace.data:
        values["data"] = data or workspace.data[0]
    if workspace.folder is not None:
        values["out"] = str(Path(workspace.folder) / "caches" / "harvest")
    return ConfigDialog(HarvestJob, "Harvest activations", HARVEST_FIELDS, values, check_harvest,
                        parent)


def check_features(cfg) -> None:
    for name in ("model", "data", "dict"):
        p = getattr(cfg, name)
        if not p or not Path(p).exists():
            raise BioLLMError(f"{name} {p or '(empty)'} does not exist; choose an existing file "
                              "or folder.")
    if cfg.top_n < 1 or cfg.top_k < 1 or cfg.batch_size < 1:
        raise BioLLMError("top n, top k and batch size must be at least 1.")


def features_dialog(cfg, parent=None) -> ConfigDialog:
    """FeaturesConfig's form, prefilled with `cfg` (the Features panel's default analysis); the
    table's file is the workspace's analysis folder, set when the job starts."""
    from biollm_engine.analysis.pipeline import FeaturesConfig

    values = dataclasses.asdict(cfg)
    return ConfigDialog(FeaturesConfig, "Analyse features", FEATURE_FIELDS, values,
                        check_features, parent, fixed={"out": values["out"]})


def ask_and_harvest(window):
    """The harvest dialog; on OK the harvest runs as a job and its cache joins the workspace."""
    from ..state.harvest import run_harvest
    from ..state.jobs import DONE

    cells = window.session.cells.path
    dialog = harvest_dialog(window.session.workspace, str(cells) if cells else None, window)
    if not dialog.exec():
        return None
    cfg = dialog.config
    job = window.runner.submit(f"Harvest {', '.join(cfg.hookpoints)} of {Path(cfg.data).name}",
                               partial(run_harvest, cfg))
    job.finished.connect(lambda status: status == DONE
                         and window.session.record("caches", job.result))
    window.docks["Jobs"].raise_()
    return job


def ask_and_analyse(window):
    """The analysis dialog over the Features panel's default analysis; OK starts the job."""
    panel = window.features_panel
    cfg = panel.default_config()
    if cfg is None:
        window.show_info("Open a workspace with a model and a dictionary, and cells, first.")
        return None
    dialog = features_dialog(cfg, window)
    if not dialog.exec():
        return None
    job = panel.analyse(dialog.config)
    window.docks["Jobs"].raise_()
    return job


def ask_and_train(window) -> object | None:
    """The train dialog; on OK the run starts in a child process and shows in the Jobs panel."""
    from ..training_process import start_training

    dialog = train_dialog(window.session.workspace, window)
    if not dialog.exec():
        return None
    job = start_training(window.session.jobs, dialog.config)
    window.docks["Jobs"].raise_()
    return job
