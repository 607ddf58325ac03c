"""Refuse names that cannot become a distribution, an import package and a TOML section."""

import re
import sys

PLUGIN_NAME = {{ cookiecutter.plugin_name|tojson }}
NAME = {{ cookiecutter.__name|tojson }}
KIND = {{ cookiecutter.kind|tojson }}

if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", NAME):
    sys.exit(
        f"ERROR: plugin_name {PLUGIN_NAME!r} must start with a letter and hold only letters, "
        "digits and single hyphens or underscores between them (for example 'acme' or "
        "'acme-cmdb')"
    )
if KIND not in ("discovery", "sink", "processor"):
    sys.exit(f"ERROR: kind {KIND!r} must be one of 'discovery', 'sink', 'processor'")
