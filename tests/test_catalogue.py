"""The paradigm catalogue and the config's name tables work without torch; descriptions print as plain text."""

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from raypriv.errors import RayprivError
from raypriv.synth import BUILTINS, Paradigm, build_options, paradigm_entry, register
from raypriv.synth.catalogue import format_catalogue, format_paradigm, plain_text

# Run in a fresh interpreter where importing torch (or torchvision) fails, as on a machine without it.
BLOCKED = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED + textwrap.dedent(code)], capture_output=True, text=True)


def test_raypriv_paradigms_runs_with_torch_blocked():
    out = run_without_torch("""
        from raypriv.cli import main
        assert main(["paradigms"]) == 0
        print("=====")
        assert main(["paradigms", "distill"]) == 0
    """)
    assert out.returncode == 0, out.stderr
    listing, distill = out.stdout.split("=====\n")
    for name in BUILTINS:
        assert f"\n{name} [built-in]: " in "\n" + listing
    assert "distill [built-in]: dataset distillation (condensation) into ipc images per class." in listing
    assert "    method: str = 'dm'; one of ['dm', 'dc', 'dsa', 'mtt', 'datm']" in listing
    assert "    command: list[str] = (required)" in listing  # external's required option
    assert distill.startswith("distill [built-in]\n\ndistill: dataset distillation")
    assert "Distribution Matching" in distill and "options (paradigm_options.distill):" in distill


def test_the_name_tables_and_option_checks_need_no_torch():
    out = run_without_torch("""
        import raypriv.data, raypriv.models
        from raypriv.errors import RayprivError
        from raypriv.synth import build_options, is_known_paradigm, paradigm_names
        assert {"digits", "cifar10", "wine", "adult", "npz"} <= set(raypriv.data.DATASETS)
        assert {"mlp", "cnn_small", "resnet18", "wrn16_4", "logreg"} <= set(raypriv.models.ARCHITECTURES)
        assert "distill" in paradigm_names() and is_known_paradigm("dpgen-marginals@eps1")
        assert build_options("distill", {"method": "dc"}).iterations == 10  # the method's default, filled in
        assert build_options("dfkd", {"teacher_arch": "wrn16_4"}).teacher_arch == "wrn16_4"
        for name, raw in [("dfkd", {"teacher_arch": "vgg"}), ("diffusion@sd", {"pipeline": "stable-diffusion"}),
                          ("external", {"command": "python3 synth.py"})]:
            try:
                build_options(name, raw)
            except RayprivError as exc:
                print(exc)
            else:
                raise AssertionError(name)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "diffusers", "transformers")
                     and sys.modules[m] is not None))
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "paradigm_options.dfkd.teacher_arch='vgg' is not allowed" in lines[0]
    assert "paradigm_options.diffusion@sd.pipeline='stable-diffusion' needs" in lines[1]  # the variant's own name
    assert "command is the string 'python3 synth.py'; give an argv list" in lines[2]
    assert lines[3] == "[]"


def test_importing_the_data_package_imports_no_torchvision():
    code = "import sys, raypriv.data; print('torchvision' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_descriptions_print_as_plain_text():
    text = format_catalogue() + "".join(format_paradigm(name) for name in BUILTINS)
    assert "``" not in text and ":mod:" not in text and ":func:" not in text and ":class:" not in text
    assert "dfkd [built-in]: data-free knowledge distillation." in text


@pytest.mark.parametrize("rst, plain", [
    ("``ipc`` images per class", "ipc images per class"),
    ("see :mod:`raypriv.synth.distill.trajectories`.", "see raypriv.synth.distill.trajectories."),
    (":func:`~raypriv.synth.dpgen.common.calibrate` and :class:`Normalizer`", "calibrate and Normalizer"),
    (":meth:`the train method <Paradigm.train>`", "the train method"),
    ("**Privacy note.**  keep ``a * b``", "Privacy note.  keep a * b"),
    ("no markup: 2 * 3 = 6", "no markup: 2 * 3 = 6"),
])
def test_plain_text_drops_inline_markup(rst, plain):
    assert plain_text(rst) == plain


def test_every_built_in_entry_names_its_class_and_options():
    for name, entry in BUILTINS.items():
        cls = entry.load()  # imports the implementation (torch)
        assert cls.name == name and cls.Options is entry.Options and dataclasses.is_dataclass(cls.Options)
        assert paradigm_entry(f"{name}@tag") is entry


def test_a_plugin_may_not_take_a_built_in_name():
    class Impostor(Paradigm):
        name = "real"

        def synthesize(self, private, context):
            return private

    with pytest.raises(RayprivError, match="paradigm name 'real' of .*Impostor is already taken by raypriv.synth.real.RealData"):
        register(Impostor)
    assert build_options("real", None) is not None  # the built-in is still there
