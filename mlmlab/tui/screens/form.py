"""The new-run form: start from any preset, edit the fields that matter, validate as you type, launch.

Validation is the CLI's own: the form turns its fields into `key=value` overrides of the chosen
preset and calls `config.load_config`, so every message is the one `mlmlab run --set …` prints.
What is launched is the resolved config written to a file, so what you validated is what runs.
"""

from __future__ import annotations

import shlex
import time
import typing
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, Select, Static

from mlmlab import config as config_module
from mlmlab.errors import ConfigError

# (key, label); Literal-typed keys become a Select, the rest an Input.
SECTIONS: list[tuple[str, list[tuple[str, str]]]] = [
    ("Data", [("data.source", "source"), ("data.tokenizer", "tokenizer"), ("data.vocab_size", "vocab size")]),
    ("Model", [("model.d_model", "d_model"), ("model.n_layers", "layers"), ("model.n_heads", "heads"),
               ("model.d_ff", "d_ff"), ("model.max_seq_len", "max_seq_len"), ("model.dropout", "dropout")]),
    ("Masking", [("mask.masking_prob", "masking"), ("mask.randomize_prob", "random"),
                 ("mask.no_change_prob", "unchanged"), ("mask.strategy", "strategy")]),
    ("Training", [("train.batch_size", "batch size"), ("train.seq_len", "seq_len"), ("train.steps", "steps"),
                  ("train.max_minutes", "max minutes"), ("train.lr", "lr"), ("train.schedule", "schedule"),
                  ("train.warmup_steps", "warm-up"), ("train.optimizer", "optimizer"),
                  ("train.precision", "precision"), ("train.seed", "seed"),
                  ("train.seq_len_schedule", "seq_len schedule"), ("train.schedule_keeps_tokens", "keep tokens/step")]),
]
FIELD_KEYS = [key for _, fields in SECTIONS for key, _ in fields]
LIST_KEYS = {"train.seq_len_schedule"}  # fields that hold a TOML list


def field_id(key: str) -> str:
    return "f-" + key.replace(".", "-")


def choices(key: str) -> tuple[str, ...] | None:
    """The allowed values of a Literal-typed key, or None for a free field."""
    section, name = key.split(".")
    annotation = config_module.ExperimentConfig.model_fields[section].annotation.model_fields[name].annotation
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None


# Form widgets an error may name besides the config fields.
OTHER_FIELDS = ("name", "device", "preset", "processes")
MAX_PROCESSES = 64  # on the CPU: more gloo processes than that only try a machine's patience
PROCESSES_TIP = ("processes: train with N DistributedDataParallel processes launched through torchrun "
                 "(one GPU each on CUDA, gloo on the CPU); the global batch is batch size x N")


def invalid_widget_id(key: str | None) -> str | None:
    """The widget to mark for an error about `key` (a `ConfigError.key`), or None when none shows it."""
    if key in FIELD_KEYS:
        return field_id(key)
    return key if key in OTHER_FIELDS else None


def shown_value(value: Any) -> str:
    """A config value as the user would type it after `--set key=`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class NewRunScreen(Screen):
    """Configure and launch a run."""

    BINDINGS = [
        Binding("ctrl+l", "launch", "Launch"),
        Binding("ctrl+s", "save_preset", "Save preset"),
        Binding("escape", "cancel", "Back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.presets: dict[str, Path] = {}
        self.loading = False
        self.current_preset: str | None = None
        self.last_error: str | None = None
        self.config: config_module.ExperimentConfig | None = None

    def compose(self) -> ComposeResult:
        self.presets = config_module.preset_files(self.app.presets_dir)
        default = config_module.DEFAULT_PRESET
        preset = default if default in self.presets else next(iter(self.presets), None)
        with VerticalScroll(id="form"):
            yield Static(Text("New run", style="bold"), classes="form-title")
            with Grid(classes="form-grid"):
                yield Label("preset")
                yield Select([(name, name) for name in self.presets], value=preset or Select.NULL,
                             allow_blank=preset is None, id="preset", compact=True)
                yield Label("name")
                yield Input(preset or "run", id="name", compact=True)
                yield Label("device")
                yield Select([("auto", "auto")], value="auto", allow_blank=False, id="device", compact=True)
                yield Static(id="device-note", classes="field-note")
                yield Label("processes")
                yield Input("1", id="processes", tooltip=PROCESSES_TIP, compact=True)
            for title, fields in SECTIONS:
                yield Static(Text(title, style="bold"), classes="form-section")
                with Grid(classes="form-grid"):
                    for key, label in fields:
                        yield Label(label, classes="field-label")
                        options = choices(key)
                        if options:
                            yield Select([(o, o) for o in options], value=options[0], allow_blank=False,
                                         id=field_id(key), tooltip=config_module.describe(key), compact=True)
                        else:
                            yield Input(id=field_id(key), tooltip=f"{key}: {config_module.describe(key)}", compact=True)
            yield Static(Text("Other settings", style="bold"), classes="form-section")
            yield Input(placeholder="key=value …, e.g. train.eval_every=50 data.valid_fraction=0.1", id="extra",
                        compact=True)
        # Outside the scroll: the verdict and the buttons stay in view however long the form is.
        yield Static(id="form-error", classes="form-error")
        with Horizontal(classes="form-buttons"):
            yield Button("Launch (ctrl+l)", variant="success", id="launch", compact=True)
            yield Button("Save as preset (ctrl+s)", id="save", compact=True)
            yield Button("Back (esc)", id="back", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.load_preset()
        self.watch(self.app, "devices", self.show_devices)
        self.app.find_devices()
        self.query_one("#name", Input).focus()

    # --- presets and devices ----------------------------------------------------------------------

    def preset_path(self) -> Path | None:
        value = self.query_one("#preset", Select).value
        return self.presets.get(value) if isinstance(value, str) else None

    def load_preset(self) -> None:
        path = self.preset_path()
        self.current_preset = path.stem if path else None
        if path is None:
            self.fill(config_module.build_config({}).to_dict())
            return
        try:
            cfg = config_module.build_config(config_module.read_toml(path))
        except ConfigError as exc:
            self.show_error(f"preset {path.name}: {exc}", "preset")
            return
        self.fill(cfg.to_dict())
        self.query_one("#name", Input).value = path.stem

    def fill(self, tree: dict[str, Any]) -> None:
        flat = config_module.flatten(tree)
        self.loading = True
        for key in FIELD_KEYS:
            widget = self.query_one(f"#{field_id(key)}")
            widget.value = shown_value(flat.get(key, ""))
        self.query_one("#extra", Input).value = ""
        self.set_device(str(flat.get("train.device", "auto")))
        self.loading = False
        self.validate()

    def set_device(self, device: str) -> None:
        select = self.query_one("#device", Select)
        ids = [value for _, value in self.device_options()]
        if device not in ids:
            select.set_options([*self.device_options(), (f"{device} (from the preset)", device)])
        select.value = device

    def device_options(self) -> list[tuple[str, str]]:
        return [("auto", "auto"), *[(d["label"], d["id"]) for d in self.app.devices or []]]

    def show_devices(self, devices: list[dict] | None) -> None:
        note = self.query_one("#device-note", Static)
        if devices is None:
            note.update(Text("finding devices…", style="dim italic"))
            return
        select = self.query_one("#device", Select)
        current = select.value
        select.set_options(self.device_options())
        self.set_device(current if isinstance(current, str) else "auto")
        found = f"{len(devices)} found; auto picks {devices[0]['id']}" if devices else "none found"
        note.update(Text(self.app.device_error or found, style="dim"))
        self.validate()

    @on(Select.Changed, "#preset")
    def preset_changed(self, event: Select.Changed) -> None:
        if event.value != self.current_preset:
            self.load_preset()

    # --- validation --------------------------------------------------------------------------------

    def overrides(self) -> list[str]:
        sets = []
        for key in FIELD_KEYS:
            widget = self.query_one(f"#{field_id(key)}")
            value = widget.value
            if key in LIST_KEYS and not value.strip():
                value = "[]"  # an emptied list field means the empty list, as `--set key=[]` does
            sets.append(f"{key}={'' if value is Select.NULL else value}")
        device = self.query_one("#device", Select).value
        sets.append(f"train.device={device}")
        extra = self.query_one("#extra", Input).value.strip()
        if extra:
            try:
                sets += shlex.split(extra)
            except ValueError as exc:
                raise ConfigError(f"other settings: {exc}", value=extra) from None
        return sets

    def validate(self) -> config_module.ExperimentConfig | None:
        """The CLI's validation of preset + fields; shows its one-line message and marks the field."""
        if self.loading:
            return None
        for widget in self.query(".-invalid"):
            widget.remove_class("-invalid")
        try:
            name = self.query_one("#name", Input).value.strip()
            if not name:
                raise ConfigError("name: give the run a name", key="name", value=name)
            path = self.preset_path()
            cfg = config_module.load_config(str(path) if path else None, self.overrides())
            self.check_device(cfg.train.device)
            self.check_processes(cfg.train.device)
        except ConfigError as exc:
            self.config = None
            self.show_error(str(exc), exc.key)
            return None
        self.config = cfg
        self.show_error(None)
        return cfg

    def check_device(self, device: str) -> None:
        """The device must be one found here (the same words as `mlmlab run --device`)."""
        found = self.app.devices
        if found is None or device == "auto":
            return
        ids = [d["id"] for d in found]
        if device == "cuda" and any(i.startswith("cuda") for i in ids):
            return
        if device not in ids:
            raise ConfigError(f"device {device!r} is not available on this machine (available: {', '.join(['auto'] + ids)})",
                              key="device", value=device)

    def processes(self) -> int:
        """The processes field as a number (the launch reads it after validation passed)."""
        text = self.query_one("#processes", Input).value.strip() or "1"
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"processes = {text!r}: must be a whole number (1 = no torchrun)",
                              key="processes", value=text) from None

    def check_processes(self, device: str) -> None:
        """More than one process: on the CPU (gloo, to try it) or one GPU each, as torchrun gives them."""
        count = self.processes()
        if count == 1:
            return
        gpus = [d["id"] for d in self.app.devices or [] if d["id"].startswith("cuda")]
        limit = len(gpus) if device in ("cuda", "auto") and gpus else MAX_PROCESSES
        problem = None
        if not 1 <= count <= limit:
            problem = f"must be between 1 and {limit}" + (f" (one per GPU: {len(gpus)} found)" if limit == len(gpus) else "")
        elif device.startswith("cuda:"):
            problem = "each process takes its own GPU: choose device auto or cuda"
        elif device == "mps":
            problem = "DistributedDataParallel runs on CUDA or the CPU, not mps"
        if problem:
            raise ConfigError(f"processes = {count}: {problem}", key="processes", value=count)

    def show_error(self, message: str | None, key: str | None = None) -> None:
        """The verdict line; `key` names the field at fault, which is marked."""
        self.last_error = message
        box = self.query_one("#form-error", Static)
        box.update(Text(message or "✓ valid: ctrl+l launches", style="" if message else "green"))
        box.set_class(bool(message), "-error")
        widget_id = invalid_widget_id(key) if message else None
        if widget_id:
            self.query_one(f"#{widget_id}").add_class("-invalid")

    @on(Input.Changed)
    @on(Select.Changed)
    def changed(self, event) -> None:
        if event.control.id == "preset" or self.loading:
            return
        self.validate()

    # --- actions -------------------------------------------------------------------------------------

    @on(Button.Pressed, "#launch")
    def action_launch(self) -> None:
        cfg = self.validate()
        if cfg is None:
            self.app.say(f"not launched: {self.last_error}", "error")
            return
        name = self.query_one("#name", Input).value.strip()
        try:
            self.app.start_new_run(config_module.to_toml(cfg), name, processes=self.processes())
        except OSError as exc:
            self.app.say(f"could not start the run: {exc}", "error")
            return
        self.dismiss()

    @on(Button.Pressed, "#save")
    def action_save_preset(self) -> None:
        from mlmlab.tui.screens.modals import PresetNameDialog

        if self.validate() is None:
            self.app.say(f"not saved: {self.last_error}", "error")
            return
        folder = config_module.default_presets_folder(self.app.presets_dir)
        existing = {p.stem for p in folder.glob("*.toml")} if folder.is_dir() else set()
        self.app.push_screen(PresetNameDialog(folder, existing), self.save_preset)

    def save_preset(self, name: str | None) -> None:
        cfg = self.config
        if not name or cfg is None:
            return
        folder = config_module.default_presets_folder(self.app.presets_dir)
        path = folder / f"{name}.toml"
        source = self.preset_path()
        header = (f"# {name}: saved from the mlmlab app on {time.strftime('%Y-%m-%d %H:%M')}"
                  f"{f', starting from {source.stem}' if source else ''}.\n")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with path.open("x", encoding="utf-8") as handle:  # never overwrite a preset
                handle.write(header + config_module.to_toml(cfg))
        except OSError as exc:
            self.app.say(f"could not save {path}: {exc.strerror or exc}", "error")
            return
        self.presets = {name: path, **self.presets}
        self.current_preset = name  # the fields already hold it: selecting it must not reload them
        select = self.query_one("#preset", Select)
        select.set_options([(n, n) for n in sorted(self.presets)])
        select.value = name
        self.app.say(f"saved preset {path}")

    @on(Button.Pressed, "#back")
    def action_cancel(self) -> None:
        self.dismiss()
