"""One log format for every stage and the CLI (`setup()`), set up in one place.

- one handler on the root logger, `HH:MM:SS LEVEL logger: message`, written through tqdm while a
  progress bar is on screen (a log line does not break the bar);
- library loggers (LIBRARIES) at WARNING, or DEBUG with ALIGNFLOW_LOG_LEVEL=DEBUG, through that
  handler: Ray, transformers, datasets and huggingface_hub install their own stderr handler (their
  own format) when imported, which is usually after `setup()`, so an import hook adopts them again
  right after their import; MLflow is told not to (MLFLOW_CONFIGURE_LOGGING);
- Python warnings through the same handler (one line each) and the known deprecation warnings
  of our pinned libraries filtered at their source (KNOWN_WARNINGS says which and why);
- transformers' load report dropped when it only says the reward head is newly initialised;
- progress bars of libraries off when stderr is not a terminal (tqdm's `disable=None` rule), so
  Airflow task logs do not fill with frozen `0%` bars.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import warnings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"
LEVEL_ENV = "ALIGNFLOW_LOG_LEVEL"

# Their INFO is chatter in a stage log (Ray's "Reported metrics" repeats every step, MLflow's
# system-metrics start/stop and mlflow.transformers notices, HTTP requests, datasets/peft notes).
LIBRARIES = (
    "ray", "mlflow", "transformers", "datasets", "huggingface_hub", "peft", "trl", "accelerate", "torch",
    "urllib3", "httpx", "httpcore", "filelock", "fsspec", "alembic", "git", "sentence_transformers",
    "vllm", "numexpr", "matplotlib", "PIL", "asyncio",
)
# Packages that install a handler of their own (or print) when imported: adopted right after.
CONFIGURE_ON_IMPORT = ("ray", "transformers", "datasets", "huggingface_hub", "mlflow")

# (message regex, category, module regex, why): warnings about one library's use of another, which
# our code cannot act on. Matched by message, category and the module that warns: any other
# warning still shows (one line, through the log handler).
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str, str], ...] = (
    # transformers 5 renamed gradient to activation checkpointing; peft 0.21 reads the old property
    # on every PeftModel load, and TRL 1.16's configs set the old argument and its trainers toggle the
    # old methods around every reference forward. Our code uses the new names (common.hf_args); the
    # warning is attributed to transformers whoever calls, so this also hides a new use of ours.
    (r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated", FutureWarning,
     r"transformers\.(modeling_utils|training_args)", "peft 0.21 / trl 1.16 use transformers 5's deprecated names"),
    (r"The specified dataset source can be interpreted in multiple ways", UserWarning,
     r"mlflow\.data\.dataset_source_registry",
     "MLflow registers LocalArtifactDatasetSource twice, so every local file is 'ambiguous' (tracking.log_dataset)"),
)

_configured_level: int | None = None


def level_from_env() -> int:
    level = logging.getLevelName(os.environ.get(LEVEL_ENV, "INFO").strip().upper())
    return level if isinstance(level, int) else logging.INFO


def library_level(level: int) -> int:
    return logging.DEBUG if level <= logging.DEBUG else logging.WARNING


class _Handler(logging.StreamHandler):
    """stderr; through `tqdm.write` while a bar is on screen, so the line prints above the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm_module = sys.modules.get("tqdm")
        if tqdm_module is None or not getattr(tqdm_module.tqdm, "_instances", None):
            return super().emit(record)
        try:
            tqdm_module.tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"{category.__name__}: {message} ({os.path.basename(filename)}:{lineno})"


# --- transformers' load report ----------------------------------------------------------------

# A causal LM (the SFT policy, a base) loaded as a sequence classifier has no score head: the
# reward stage trains it from scratch, and a LoRA reward model brings it in its adapter
# (modules_to_save), so "score.weight MISSING" is expected on every such load.
EXPECTED_NEW_KEYS = re.compile(r"^score\.(weight|bias)$")
# from_pretrained logs it on its own logger; the report's module has a default one
LOAD_REPORT_LOGGERS = ("transformers.modeling_utils", "transformers.utils.loading_report")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def expected_load_report(message: str) -> bool:
    """A transformers LOAD REPORT whose only rows are expected new keys (the reward head)."""
    if "LOAD REPORT" not in message:
        return False
    rows = []
    for line in _ANSI.sub("", message).splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 2 and cells[1] in ("MISSING", "UNEXPECTED", "MISMATCH", "CONVERSION"):
            rows.append(cells)
    return bool(rows) and all(c[1] == "MISSING" and EXPECTED_NEW_KEYS.match(c[0]) for c in rows)


class _LoadReportFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not expected_load_report(record.getMessage())


# --- setup ------------------------------------------------------------------------------------


def adopt_library_loggers(level: int | None = None) -> None:
    """Library loggers at the library level, printed by the root handler (one format).
    Idempotent; also called inside training loops (a Ray worker configures its own)."""
    if level is None:
        level = _configured_level if _configured_level is not None else level_from_env()
    level = library_level(level)
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(level)
    # Ray Train sets ray.train to DEBUG when a run starts (on workers with handlers of its own, for
    # its log files and the driver: kept); its INFO repeats every reported step ("Reported metrics").
    logging.getLogger("ray.train").setLevel(level)
    # Ray names a few loggers by file path (getLogger(__file__), e.g. a worker's "Reporting training
    # result" per report): outside "ray", so set one by one
    ray_dir = f"{os.sep}ray{os.sep}"
    for name in [n for n in logging.Logger.manager.loggerDict if ray_dir in n and n.endswith(".py")]:
        logging.getLogger(name).setLevel(level)
    for name in LOAD_REPORT_LOGGERS:
        report = logging.getLogger(name)
        if not any(isinstance(f, _LoadReportFilter) for f in report.filters):
            report.addFilter(_LoadReportFilter())
    _route_mlflow_prints()


class _AdoptAfterImport(importlib.abc.MetaPathFinder):
    """Re-adopt the library loggers right after a CONFIGURE_ON_IMPORT package is imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in CONFIGURE_ON_IMPORT:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        exec_module = loader.exec_module

        def exec_then_adopt(module):
            exec_module(module)
            adopt_library_loggers()
            _quiet_progress_bars()

        loader.exec_module = exec_then_adopt
        return spec


def _quiet_progress_bars() -> None:
    """Library bars (datasets map, model loading, hub downloads) only on a terminal."""
    from alignflow.progress import is_tty

    if is_tty():
        return
    # read when the libraries are imported (usually later: they are imported lazily)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow the hub's
    os.environ.setdefault("TQDM_DISABLE", "1")  # any other tqdm, e.g. TRL's reference log-prob pass
    # already imported (components import the launcher, hence transformers, before setup())
    for module, disable in (("datasets", "disable_progress_bars"), ("huggingface_hub.utils", "disable_progress_bars"),
                            ("transformers.utils.logging", "disable_progress_bar")):
        if hasattr(sys.modules.get(module), disable):
            getattr(sys.modules[module], disable)()


def filter_known_warnings() -> None:
    for message, category, module, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


class _LinesToLog:
    """A stream that logs each line written to it (INFO) while `enabled()`."""

    def __init__(self, logger: logging.Logger, enabled):
        self.logger, self.enabled, self.buffer = logger, enabled, ""

    def write(self, text: str) -> int:
        if self.enabled():
            self.buffer += text
            *lines, self.buffer = self.buffer.split("\n")
            for line in filter(str.strip, lines):
                self.logger.info("%s", line.strip())
        return len(text)

    def flush(self) -> None:
        pass


def _route_mlflow_prints() -> None:
    """MLflow prints some events itself (`eprint`: "Successfully registered model", the run's URL):
    one log line each, in our format."""
    utils = sys.modules.get("mlflow.utils.logging_utils")
    stream = getattr(utils, "MLFLOW_LOGGING_STREAM", None)
    if stream is None or isinstance(stream.__dict__.get("_lines"), _LinesToLog):
        return
    stream._lines = _LinesToLog(logging.getLogger("alignflow.tracking"), lambda: stream.enabled)
    stream.write, stream.flush = stream._lines.write, stream._lines.flush


def setup(level: int | str | None = None) -> int:
    """Configure logging for this process (a stage, the CLI); returns the level. Idempotent.

    A host that already configured the root logger (pytest, Airflow running a stage in-process)
    keeps its handlers; only the levels, library loggers and warnings are set."""
    global _configured_level
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    level = level if isinstance(level, int) else level_from_env()
    _configured_level = level
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # MLflow's own handler and date format
    root = logging.getLogger()
    if not root.handlers:
        handler = _Handler()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt=DATEFMT))
        root.addHandler(handler)
    root.setLevel(level)
    adopt_library_loggers(level)
    if not any(isinstance(f, _AdoptAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AdoptAfterImport())
    logging.captureWarnings(True)
    warnings.formatwarning = _format_warning
    filter_known_warnings()
    _quiet_progress_bars()
    return level
