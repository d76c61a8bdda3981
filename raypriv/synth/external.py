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

Validation (:func:`raypriv.synth.validation.check_training_set`, the same
checks a Python plugin's output passes): the output must hold ``x`` with the
private set's feature shape, at least one row, a numeric dtype (images:
``uint8``, or floats in [0, 1]) and finite values, and one label per row:
class ids in ``[0, num_classes)`` or probability rows.
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
from raypriv.synth.validation import check_training_set

STDERR_TAIL = 2000  # characters of the command's stderr kept in a failure message


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return ("..." + text[-STDERR_TAIL:]) if len(text) > STDERR_TAIL else (text or "(empty)")


def validate_output(arrays: Any, private: LabeledSet, num_classes: int, image: bool) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic ``(x, y)`` read from the command's output, or :class:`ValueError` saying what is wrong.

    The arrays pass :func:`raypriv.synth.validation.check_training_set`, the
    checks every plugin's output passes too.
    """
    missing = {"x", "y"} - set(arrays.files)
    if missing:
        raise ValueError(f"it lacks the array(s) {sorted(missing)} (found {sorted(arrays.files)})")
    return check_training_set(
        arrays["x"], arrays["y"], feature_shape=tuple(private.x.shape[1:]), num_classes=num_classes, image=image
    )


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

    output_tail_bytes = 64 * 1024  # of each of the command's stdout and stderr kept while it runs

    def _run(self, argv: list[str], workdir: str, model: str) -> None:
        """Run the command, draining stdout and stderr as they come and keeping only their last
        :attr:`output_tail_bytes` each: a command that prints gigabytes holds no more memory than that."""
        import contextlib
        import threading
        import time

        limit = self.output_tail_bytes
        env = {**os.environ, **self.options.env}
        process = subprocess.Popen(
            argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
        tails = {"stdout": bytearray(), "stderr": bytearray()}

        def drain(name: str, pipe: Any) -> None:
            tail = tails[name]
            with pipe:
                while chunk := os.read(pipe.fileno(), 1 << 16):
                    tail += chunk
                    if len(tail) > 2 * limit:
                        del tail[:-limit]

        readers = [threading.Thread(target=drain, args=(name, pipe), daemon=True)
                   for name, pipe in (("stdout", process.stdout), ("stderr", process.stderr))]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + self.options.timeout_s
        try:
            process.wait(timeout=self.options.timeout_s)
            for reader in readers:  # a child it left behind may hold the pipes open: that counts as running
                reader.join(max(0.0, deadline - time.monotonic()))
            timed_out = any(reader.is_alive() for reader in readers)
        except subprocess.TimeoutExpired:
            timed_out = True
        except BaseException:  # interrupted: leave no command running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            raise
        if timed_out:
            with contextlib.suppress(ProcessLookupError):  # the group may have ended meanwhile
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            for reader in readers:
                reader.join(5.0)
            raise ModelFailed(
                f"{model}: the external command timed out after {self.options.timeout_s:g}s (raise "
                f"paradigm_options.external.timeout_s); stderr tail: {_tail(bytes(tails['stderr'][-limit:]))}"
            ) from None
        if process.returncode != 0:
            raise ModelFailed(
                f"{model}: the external command {argv[0]!r} exited with status {process.returncode}; "
                f"stderr tail: {_tail(bytes(tails['stderr'][-limit:]))}"
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
