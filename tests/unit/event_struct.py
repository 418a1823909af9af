"""struct event_t read out of skbtracer.c's text (no compiler, no bcc) and
laid out by C's rules, and how it differs from the field table
(skbtracer_lib/events/fields.py). Imports nothing of skbtracer_lib: the
one-line test of test_event_fields.py runs it on a copy of the tree."""

import re
from typing import NamedTuple

# the types struct event_t uses: size (and alignment) in bytes
C_SIZES = {"u64": 8, "u32": 4, "s32": 4, "u16": 2, "u8": 1, "char": 1}
_STRUCT = r"^struct %s \{\n(.*?)^\};"
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_MEMBER = re.compile(r"(\w+)\s+(\w+)\s*(?:\[\s*(\d+)\s*\])?")


class Member(NamedTuple):
    ctype: str
    name: str
    count: int
    offset: int
    size: int


class NotAMember(ValueError):
    """A line of the struct this reader does not understand."""


def members(c_text, struct="event_t"):
    """(members of struct event_t (or another of these types only) in
    order, with C's offsets; its size)."""
    found = re.search(_STRUCT % struct, c_text, re.M | re.S)
    if found is None:
        raise NotAMember("no struct %s in the C text" % struct)
    body = _COMMENT.sub("", found.group(1))
    result, offset, widest = [], 0, 1
    for statement in body.split(";"):
        statement = " ".join(statement.split())
        if not statement:
            continue
        member = _MEMBER.fullmatch(statement)
        if member is None or member.group(1) not in C_SIZES:
            raise NotAMember("struct %s: cannot read %r" % (struct, statement))
        ctype, name, count = member.group(1), member.group(2), int(member.group(3) or 1)
        size = C_SIZES[ctype]
        offset = -(-offset // size) * size          # aligned to its type's size
        result.append(Member(ctype, name, count, offset, size * count))
        offset += size * count
        widest = max(widest, size)
    return result, -(-offset // widest) * widest    # padded to its widest member


def differences(c_members, table):
    """What differs between the C struct's members and the table's fields
    (name, order, C type, count, offset, size), as sentences; [] if nothing."""
    said = []
    c_names = [m.name for m in c_members]
    table_names = [f.name for f in table]
    for name in c_names:
        if name not in table_names:
            said.append("%s is in struct event_t, not in the field table" % name)
    for name in table_names:
        if name not in c_names:
            said.append("%s is in the field table, not in struct event_t" % name)
    if not said and c_names != table_names:
        said.append("the order differs: C %s, table %s" % (c_names, table_names))
    by_name = {f.name: f for f in table}
    for m in c_members:
        f = by_name.get(m.name)
        if f is None:
            continue
        c_side = (m.ctype, m.count, m.offset, m.size)
        table_side = (f.ctype, f.count, f.offset, f.size)
        if c_side != table_side:
            said.append("%s: C has (type, count, offset, size) %s, the table %s"
                        % (m.name, c_side, table_side))
    return said
