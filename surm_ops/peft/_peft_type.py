"""Add our members to PEFT's ``PeftType`` enum at run time.

``peft.utils.register_peft_method`` only accepts a name whose upper case is already a ``PeftType`` member, and the
enum is closed to third parties; so each of our methods gets a member here, built the way ``enum`` builds its own
(a ``str`` subclass instance carrying ``_name_``/``_value_``), before it is registered.
"""

from __future__ import annotations

from peft.utils import PeftType


def add_peft_type(name: str) -> PeftType:
    """The ``PeftType`` member ``name`` (upper case), created if absent. Idempotent."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    member.__init__(name)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)  # EnumType.__setattr__ guards only existing members; be explicit
    return member
