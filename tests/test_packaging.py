"""One import namespace: every package folder is installed under ``cnncompiler.``."""

import pathlib

import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for prefix, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([prefix, *rel.parts]))
    assert found == listed
    assert all(p == "cnncompiler" or p.startswith("cnncompiler.") for p in listed)


def test_backends_and_frontends_live_under_cnncompiler():
    import cnncompiler.backends
    import cnncompiler.frontends

    assert callable(cnncompiler.backends.available)
    assert cnncompiler.frontends.__name__ == "cnncompiler.frontends"
