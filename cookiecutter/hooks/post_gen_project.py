"""Keep only the implementation module of the chosen kind."""

from pathlib import Path

KIND = "{{ cookiecutter.kind }}"
PACKAGE = Path("{{ cookiecutter.__package_name }}")
MODULES = {"discovery": "_discoverer.py", "sink": "_sink.py", "processor": "_processor.py"}

for kind, module in MODULES.items():
    if kind != KIND:
        (PACKAGE / module).unlink()
