import subprocess
import sys

import pytest

from diff2scene.cli import SUBCOMMANDS, build_parser, main


def test_every_listed_command_is_registered_by_its_module() -> None:
    for name, (module, _) in SUBCOMMANDS.items():
        parser = build_parser(name)
        sub = next(a for a in parser._actions if a.dest == "command")
        assert name in sub.choices, f"{module} does not register {name!r}"  # type: ignore[attr-defined]


def test_a_command_imports_only_its_module() -> None:
    code = (
        "import sys\nfrom diff2scene.cli import main\n"
        "try:\n    main(['synth', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'open3d' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False True"


def test_errors_are_reported_not_raised(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bag-info", str(tmp_path / "missing")]) == 2
    assert "bag not found" in capsys.readouterr().err


def test_models_lists_profiles_without_importing_torch() -> None:
    code = (
        "import sys\nfrom diff2scene.cli import main\nrc = main(['models'])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "0 False"
    assert any(line.startswith("tiny ") and "tiny.yaml" in line for line in lines)


def test_unknown_profile_is_an_error_naming_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models", "no_such_profile"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diff2scene models: error: unknown model profile 'no_such_profile'")
    assert "odise_sd15, tiny" in err
