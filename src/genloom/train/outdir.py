"""The directory a training command writes (`--out`): what it already holds, and whether a run may
write there, so no command ever trains over another command's model or destroys its own old one.

`occupant(directory)` says what a directory holds, from the files each training command leaves
(`MARKERS`): a finished model of a command (title, condition, summarize, nvae, search), an
unfinished run of one (checkpoints but no model yet), a bare model directory of
`genloom.models.save` (config.json with a model_type), files of something else, or nothing.

`output_directory(out, kind=..., force=, resume=)` is the one rule every training command follows:

- new or empty: the run writes there in place (so a killed run can be resumed);
- another kind of model, or anything not written by this command: refused, with or without
  `--force` (nothing there is touched);
- this command's finished model or unfinished run: refused unless `--force` (start over) or
  `--resume` (continue in place from the last checkpoint; a finished model whose checkpoints were
  kept is continued too, e.g. to a larger step budget). With `--force` the new run is built in a
  temporary directory beside `out` and replaces it only when it is complete (`files.
  atomic_directory`): a run that fails or is killed leaves the old model as it was (the
  temporary directory of a killed one is removed by the next --force run of the same `out`).

`check_out` is the same decision without the context, for a command to call before it reads its
data or loads anything.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genloom.errors import UserError
from genloom.files import atomic_directory

# the command that writes each kind, for messages
COMMANDS = {"title": "title train", "condition": "condition train", "summarize": "summarize train",
            "nvae": "nvae train", "search": "search train-models"}
# marker file (relative to the directory) -> the kind of finished model it marks; checked in order
MARKERS: tuple[tuple[str, str], ...] = (
    ("title.json", "title"),
    ("condition.json", "condition"),
    ("summarize.json", "summarize"),
)
OWNER_FILE = ".genloom-owner"  # the pid of the --force run building a temporary directory beside --out
SEARCH_MODELS = ("mlm", "forward", "backward", "eval-zh", "eval-en")  # sub-directories of search train-models
WORDS = {"title": "a title model", "condition": "a condition model", "summarize": "a summarizer",
         "nvae": "an nvae run and its model", "search": "search models"}


@dataclass(frozen=True)
class Occupant:
    """What a would-be output directory holds."""

    kind: str  # a key of COMMANDS, "model" (a bare model directory), "run" (some training run),
    # "file" (--out is a file) or "other" (files that are none of these)
    finished: bool  # a complete model (False: an unfinished run)
    what: str  # in words, for messages ("a title model", "an unfinished nvae run", ...)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def check_same_run(run_dir: Path, old: dict[str, Any], new: dict[str, Any], *, may_differ: tuple[str, ...] = (),
                   what: str = "settings") -> None:
    """--resume: the settings a run is resumed with (`new`) must be those it was started with
    (`old`, as read back from its JSON), but for the keys in `may_differ`.

    Raises:
        UserError: naming the first keys that differ.
    """
    new = json.loads(json.dumps(new, default=str))  # as it reads back (tuples as lists)
    differ = sorted(k for k in set(old) | set(new) if k not in may_differ and old.get(k) != new.get(k))
    if differ:
        raise UserError(f"--resume needs the {what} of the stopped run in {run_dir}; these differ: "
                        f"{', '.join(differ[:5])}")


def _run_kind(run_config: dict[str, Any]) -> str:
    """The command of a run from the task settings `fit` wrote into its config.json."""
    task = run_config.get("task") or {}
    if not isinstance(task, dict):
        return "run"
    if task.get("writer") in COMMANDS:  # recorded by the commands that resume through `fit`
        return task["writer"]
    if "arch" in task and "max_title_len" in task:  # title runs from before "writer" was recorded
        return "title"
    if "model_config" in task or task.get("model") in ("nvae", "vae"):
        return "nvae"
    if task.get("model") in SEARCH_MODELS:
        return "search"
    return "run"


def _stem(name: str) -> str:
    """A directory's name without the dots and suffix of `files.atomic_directory`'s temporary
    name (".mlm.x1y2.tmp" -> "mlm")."""
    return name.lstrip(".").split(".")[0]


def _check_creatable(out: Path) -> None:
    """A one-line `UserError` unless `out` (a directory) exists and is writable, or could be
    created; leaves nothing behind."""
    here = out
    while not here.exists():
        if here.parent == here:
            break
        here = here.parent
    if not here.is_dir():
        raise UserError(f"cannot write --out {out}: {here} is not a directory")
    try:  # a real probe: permissions alone do not tell (root, read-only or virtual file systems)
        os.rmdir(tempfile.mkdtemp(prefix=".genloom-probe.", dir=here))
    except OSError as e:
        raise UserError(f"cannot write --out {out}: {e.strerror or e} in {here}") from None


def occupant(directory: str | Path) -> Occupant | None:
    """What `directory` holds (module docstring); None when it does not exist or is empty."""
    d = Path(directory)
    if not d.exists():
        return None
    if not d.is_dir():
        return Occupant("file", True, "a file")
    if not any(d.iterdir()):
        return None
    for marker, kind in MARKERS:
        if (d / marker).is_file():
            label = (read_json(d / marker) or {}).get("kind") if kind == "condition" else None
            return Occupant(kind, True, f"a condition {label!r} model" if label else WORDS[kind])
    model = read_json(d / "model" / "config.json") or {}
    if model.get("model_type") in ("nvae", "vae") or model.get("model") in ("nvae", "vae"):
        return Occupant("nvae", True, WORDS["nvae"])
    if any((d / m / "config.json").is_file() for m in SEARCH_MODELS):
        return Occupant("search", True, WORDS["search"])
    if (d / "runs").is_dir() and any(_stem(p.name) in SEARCH_MODELS for p in (d / "runs").iterdir()):
        return Occupant("search", False, "an unfinished search train-models run")
    if any((d / p).exists() for p in ("summarize-run.json", "encoder", "runs/seq2seq", "runs/extractor")):
        return Occupant("summarize", False, "an unfinished summarize run")
    if (d / "run" / "config.json").is_file():
        return Occupant("condition", False, "an unfinished condition run")
    config = read_json(d / "config.json") or read_json(d / "pretrain" / "config.json")  # (title's pre-training run first)
    if config is not None and "model_type" in config:
        return Occupant("model", True, f"another model ({config['model_type']})")
    if config is not None and "train" in config:
        kind = _run_kind(config)
        return Occupant(kind, False, f"an unfinished {kind} run" if kind != "run" else "another training run")
    if (d / "checkpoints").is_dir():
        return Occupant("run", False, "another training run (checkpoints/)")
    return Occupant("other", True, "files of something else")


def refuse_other(out: str | Path, *, kind: str) -> Occupant | None:
    """What `out` holds (`occupant`), after a one-line `UserError` when that is a file or anything
    but a `kind` model or run: what no `kind` command may write over, --force or not."""
    out = Path(out)
    taken = occupant(out)
    if taken is not None and taken.kind == "file":
        raise UserError(f"--out {out} is a file, not a directory")
    if taken is not None and taken.kind != kind:
        raise UserError(f"--out {out} holds {taken.what}, not a {kind} model; `{COMMANDS.get(kind, kind)}` will "
                        "not write there (with or without --force): choose another --out")
    return taken


def check_out(out: str | Path, *, kind: str, force: bool = False, resume: bool = False,
              resumable: bool = True) -> bool:
    """Raise a one-line `UserError` unless a `kind` run may write to `out` (module docstring);
    returns True when `out` is to be replaced whole (--force over this command's own model or
    run), False when the run writes into `out` itself (new, empty, or --resume). `resumable`:
    whether the command has --resume (the messages offer it only then)."""
    out = Path(out)
    if force and resume:
        raise UserError("--force starts the run over and --resume continues it: pass one")
    taken = refuse_other(out, kind=kind)
    if taken is None:
        if resume:
            raise UserError(f"nothing to resume: {out} holds no {COMMANDS.get(kind, kind)} run")
        _check_creatable(out)
        return False
    if resume:
        if taken.finished and not any(out.rglob("checkpoints/step-*")):
            raise UserError(f"nothing to resume: {out} holds a finished {kind} model and no checkpoint "
                            "(--force trains it anew)")
        _check_creatable(out)
        return False
    if not force:
        if taken.finished:
            raise UserError(f"--out {out} already holds {taken.what}; pass --force to replace it or choose "
                            "another --out")
        how = "pass --resume to continue it, --force to start over," if resumable else "pass --force to start over"
        raise UserError(f"--out {out} holds {taken.what}; {how} or choose another --out")
    _check_creatable(out.parent)
    return True


@contextmanager
def output_directory(out: str | Path, *, kind: str, force: bool = False, resume: bool = False,
                     resumable: bool = True) -> Iterator[Path]:
    """The directory a `kind` run writes into (`check_out`): `out` itself, or, when it replaces
    what `out` holds, a new directory beside it that takes its place only once the block ends
    without error (the old one is kept until then, and kept as it was when the block fails). A
    directory the block created in place is removed again when the block fails before any
    checkpoint was written (nothing to resume, nothing left behind)."""
    out = Path(out)
    if not check_out(out, kind=kind, force=force, resume=resume, resumable=resumable):
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot write --out {out}: {e.strerror or e}") from None
        try:
            yield out
        except BaseException:
            if created and not any(out.rglob("checkpoints/step-*")):  # nothing to resume: leave nothing
                shutil.rmtree(out, ignore_errors=True)
            raise
        return
    _remove_abandoned(out)
    with atomic_directory(out, replace=True, what="--out") as tmp:
        owner = tmp / OWNER_FILE
        owner.write_text(str(os.getpid()))
        yield tmp
        owner.unlink(missing_ok=True)


def _remove_abandoned(out: Path) -> None:
    """Remove the temporary directories beside `out` that earlier --force runs of it left when
    they were killed (their owner process is gone); one whose process still runs is kept."""
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        try:
            pid = int((tmp / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not one of ours
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:  # alive (another user's process): keep
            pass


def untrained(result: Any) -> None:
    """Raise a one-line `UserError` when a run (`fit`'s FitResult) took no optimizer step: an
    untrained model is never saved as if it were a result."""
    if result.step == 0:
        raise UserError("the run took no training step (its budget or data allowed none); no model was saved")
