"""Every module in this package is a scenario module: importing it registers its `@scenario` classes.

The run order is `ORDER` below for the built-in ones (later scenarios use what earlier ones measured, such as
the sustainable rate from `keeps_up`), then any other module in alphabetical order.
"""

import importlib
import pkgutil

ORDER = ["capture", "keeps_up", "drain", "snapshot", "lag", "proxy", "cache", "cost", "soak"]


def load_all() -> None:
    names = [m.name for m in pkgutil.iter_modules(__path__)]
    for name in ORDER + sorted(n for n in names if n not in ORDER):
        if name in names:
            importlib.import_module(f"{__name__}.{name}")
