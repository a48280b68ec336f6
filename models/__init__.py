"""Model families. `get_model(family)` returns the module with `init(rng, cfg)` and `apply`."""

from types import ModuleType


def get_model(family: str) -> ModuleType:
    """The model module for `model.family`: 'decoder', 'encoder' or 'encdec'."""
    from models import decoder, encdec, encoder

    families = {"decoder": decoder, "encoder": encoder, "encdec": encdec}
    if family not in families:
        raise ValueError(f"model.family={family!r} is unknown; choose one of {sorted(families)}")
    return families[family]
