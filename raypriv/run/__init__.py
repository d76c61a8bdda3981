"""A run directory: its on-disk format, its lifecycle, its lease and its fingerprints.

* :mod:`raypriv.run.store`: the one place that defines the files of a run
  and writes them atomically (:class:`~raypriv.run.store.RunStore`);
* :mod:`raypriv.run.directory`: create or resume a run, the manifest, the
  stored split, which models are complete, ``raypriv status``;
* :mod:`raypriv.run.lease`: one audit at a time per run directory;
* :mod:`raypriv.run.fingerprints`: the protocol and recipe hashes that decide
  what a run may resume and attack.

A finished run as the API, the report and the analysis scripts read it is
:class:`raypriv.reader.Run`, one floor up (it also opens the report and the
logits dataset).
"""
