"""``external``: a user's own program makes each shadow model's training set (any language or framework).

For every shadow model raypriv writes the private set to ``private.npz``
(``x``, ``y``, ``seed``, ``model_id``, ``num_classes``) in a fresh scratch
directory, runs ``command`` there, and reads the synthetic set back from
``{output}`` (``.npz`` with ``x`` and ``y``; ``y`` class ids ``(N,)`` or soft
labels ``(N, num_classes)``).  The audited model then trains on it with the
config's recipe, like every other paradigm.

Options (``paradigm_options.external``):

* ``command``: the argv list, e.g. ``[python3, synth.py, "{private}", "{output}"]``.
  Placeholders ``{private}``, ``{output}``, ``{seed}`` (the shadow's own seed),
  ``{model_id}`` and ``{workdir}`` are replaced when they are a whole
  argument (``--out={output}`` is refused: write ``[--out, "{output}"]``).
  The program must be on PATH (or a path) on every node that runs shadow
  models; on Ray ship it with ``ray job submit --working-dir``.  A relative
  path argument naming an existing file is made absolute against the
  worker's working directory (where the audit or the Ray job runs), because
  the command itself runs in the scratch directory.
* ``timeout_s`` (default 600): seconds before the command is killed (its
  whole process group).
* ``env``: extra environment variables for the command (added to the worker's).
* ``output``: the output format; ``npz`` is the one implemented.

Security: the command runs with the worker's rights.  It is never run
through a shell: the argv list goes straight to ``exec``, placeholders are
substituted as whole arguments (a value holding ``;`` or ``$(...)`` arrives
literally), and its working directory is a per-model scratch directory that
is deleted afterwards.

Validation: the output must hold ``x`` with the private set's feature shape
and a numeric dtype (images: ``uint8``, or floats in [0, 1]), finite values,
and labels that are class ids in ``[0, num_classes)`` or probability rows.
A non-zero exit, a timeout or a malformed output fails that model only
(:class:`raypriv.errors.ModelFailed`, with the tail of the command's
stderr): the run goes on for the other models, and a rerun retries it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from typing import Any

import numpy as np
import torch

from raypriv.errors import ModelFailed
from raypriv.seeding import torch_seed
from raypriv.synth.base import LabeledSet, Paradigm, ShadowContext
from raypriv.synth.options import ExternalOptions

STDERR_TAIL = 2000  # characters of the command's stderr kept in a failure message


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return ("..." + text[-STDERR_TAIL:]) if len(text) > STDERR_TAIL else (text or "(empty)")


def _labels(y: np.ndarray, n: int, num_classes: int) -> tuple[np.ndarray | None, str | None]:
    """The labels as int64 ids or float32 probabilities, or why they are malformed."""
    if len(y) != n:
        return None, f"y has {len(y)} rows but x has {n}"
    if y.ndim == 1 and y.dtype.kind in "iu":
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            return None, f"y holds classes {int(y.min())}..{int(y.max())}, outside [0, {num_classes})"
        return y.astype(np.int64), None
    if y.ndim == 2 and y.shape[1] == num_classes and y.dtype.kind == "f":
        if not np.isfinite(y).all():
            return None, "y (soft labels) holds NaN or infinite values"
        if (y < 0).any() or not np.allclose(y.sum(axis=1), 1.0, atol=1e-3):
            return None, "y (soft labels) rows must be non-negative and sum to 1"
        return y.astype(np.float32), None
    return None, (
        f"y has shape {y.shape} and dtype {y.dtype}; give integer class ids (N,) or float probabilities "
        f"(N, {num_classes})"
    )


def validate_output(arrays: Any, private: LabeledSet, num_classes: int, image: bool) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic ``(x, y)`` read from the command's output, or :class:`ValueError` saying what is wrong."""
    missing = {"x", "y"} - set(arrays.files)
    if missing:
        raise ValueError(f"it lacks the array(s) {sorted(missing)} (found {sorted(arrays.files)})")
    x, y = arrays["x"], arrays["y"]
    feature_shape = tuple(private.x.shape[1:])
    if x.ndim != len(feature_shape) + 1 or tuple(x.shape[1:]) != feature_shape or len(x) == 0:
        raise ValueError(f"x has shape {x.shape}; expected (N, {', '.join(map(str, feature_shape))}) with N >= 1")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise ValueError("x holds NaN or infinite values")
        if image and (x.min() < 0.0 or x.max() > 1.0):
            raise ValueError(f"x (images as floats) lies in [{x.min():.3g}, {x.max():.3g}], outside [0, 1]")
        x = x.astype(np.float32)
    elif not (image and x.dtype == np.uint8):
        raise ValueError(f"x has dtype {x.dtype}; give float32 ({'in [0, 1], or uint8 ' if image else ''}features)")
    labels, problem = _labels(y, len(x), num_classes)
    if problem:
        raise ValueError(problem)
    return x, labels


class ExternalCommand(Paradigm):
    """Your own program makes each shadow model's training set: it reads {private} and writes {output} (.npz)."""

    name = "external"
    Options = ExternalOptions

    def argv(self, values: dict[str, str]) -> list[str]:
        """The command with whole-argument placeholders replaced; relative paths to existing files made absolute."""
        out = []
        for argument in self.options.command:
            if argument.startswith("{") and argument.endswith("}") and argument[1:-1] in values:
                out.append(values[argument[1:-1]])
            elif not os.path.isabs(argument) and os.sep in argument and os.path.exists(argument):
                out.append(os.path.abspath(argument))
            else:
                out.append(argument)
        return out

    def _run(self, argv: list[str], workdir: str, model: str) -> None:
        env = {**os.environ, **self.options.env}
        process = subprocess.Popen(
            argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
        try:
            _, stderr = process.communicate(timeout=self.options.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate()
            raise ModelFailed(
                f"{model}: the external command timed out after {self.options.timeout_s:g}s (raise "
                f"paradigm_options.external.timeout_s); stderr tail: {_tail(stderr)}"
            ) from None
        if process.returncode != 0:
            raise ModelFailed(
                f"{model}: the external command {argv[0]!r} exited with status {process.returncode}; "
                f"stderr tail: {_tail(stderr)}"
            )

    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        model = f"{context.paradigm} model {context.model_id}"
        seed = torch_seed(context.seed, f"{context.paradigm}/external", context.model_id)
        with tempfile.TemporaryDirectory(prefix=f"raypriv-external-{context.model_id}-") as workdir:
            values = {
                "private": os.path.join(workdir, "private.npz"),
                "output": os.path.join(workdir, "synthetic.npz"),
                "seed": str(seed),
                "model_id": str(context.model_id),
                "workdir": workdir,
            }
            np.savez(
                values["private"], x=private.x.cpu().numpy(), y=private.y.cpu().numpy(), seed=np.int64(seed),
                model_id=np.int64(context.model_id), num_classes=np.int64(context.num_classes),
            )
            self._run(self.argv(values), workdir, model)
            if not os.path.exists(values["output"]):
                raise ModelFailed(f"{model}: the external command exited 0 but wrote no {values['output']}")
            try:
                with np.load(values["output"], allow_pickle=False) as arrays:
                    x, y = validate_output(arrays, private, context.num_classes, len(context.input_shape) == 3)
            except (ValueError, OSError) as exc:
                raise ModelFailed(f"{model}: the external command's output is malformed: {exc}") from None
        return LabeledSet(torch.from_numpy(x).to(context.device), torch.from_numpy(y).to(context.device))
