#!/usr/bin/env python3
"""A synthesizer for raypriv's ``external`` paradigm, in plain NumPy: noisy copies of private samples.

raypriv runs it once per shadow model, e.g. with
``command: [python3, examples/external-command/noisy_copies.py, "{private}", "{output}", "{seed}"]``.
It reads the private set (``x``, ``y``, ``num_classes``) from PRIVATE and writes
OUTPUT (``x``, ``y``): ``n`` records, each a random private sample plus
Gaussian noise of ``--noise`` standard deviations (pixel scale for images),
clipped to the valid range, keeping its label.  Any program in any language
can take its place, as long as it reads and writes these two ``.npz`` files.

``--fail-model K --fail-while FILE`` exits with status 1 for model K while FILE
exists: a way to see how a failing model is reported and retried on rerun.
"""

import argparse
import os
import sys

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("private")
    parser.add_argument("output")
    parser.add_argument("seed", type=int)
    parser.add_argument("model_id", type=int, nargs="?", default=0)
    parser.add_argument("--noise", type=float, default=0.1, help="noise std (pixel scale 0..1 for images)")
    parser.add_argument("--n", type=int, default=None, help="records to write (default: as many as private)")
    parser.add_argument("--fail-model", type=int, default=None)
    parser.add_argument("--fail-while", default=None)
    args = parser.parse_args()
    if args.fail_model == args.model_id and args.fail_while and os.path.exists(args.fail_while):
        print(f"model {args.model_id}: failing on purpose while {args.fail_while} exists", file=sys.stderr)
        return 1

    private = np.load(args.private)
    x, y = private["x"], private["y"]
    rng = np.random.default_rng(args.seed)  # the shadow's own seed: reproducible
    pick = rng.integers(0, len(x), size=args.n or len(x))
    if x.dtype == np.uint8:  # images: work in pixel scale 0..1, write float32
        copies = x[pick].astype(np.float32) / 255.0
        copies = np.clip(copies + rng.normal(0.0, args.noise, copies.shape), 0.0, 1.0)
    else:  # tabular features: noise relative to each feature's spread
        copies = x[pick] + rng.normal(0.0, args.noise, x[pick].shape) * x.std(axis=0)
    np.savez(args.output, x=copies.astype(np.float32), y=y[pick].astype(np.int64))
    return 0


if __name__ == "__main__":
    sys.exit(main())
