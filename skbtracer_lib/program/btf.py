"""A small reader for the kernel's BTF (/sys/kernel/btf/*).

skbtracer needs three things from BTF and nothing else:
  * where a struct member lives (byte offset, size, bitfield shift/width),
    following anonymous unions/structs and typedefs on the way;
  * which argument of a kernel function is the sk_buff;
  * the enumerators of an enum (skb_drop_reason).

Module BTF (e.g. /sys/kernel/btf/bridge) is "split" BTF: its type ids and
string offsets continue after those of vmlinux, so a module is always read
on top of its base.
"""

import atexit
import contextlib
import functools
import hashlib
import os
import pickle
import stat
import struct

BTF_DIR = "/sys/kernel/btf"
CACHE_DIR = "/run/skbtracer"       # AnswerCache; None: no cache
BTF_MAGIC = 0xEB9F

# BTF kinds (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)

# Bytes that follow the 12-byte common header, per kind: (fixed, per vlen item)
_EXTRA = {INT: (4, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12), ENUM: (0, 8),
          FUNC_PROTO: (0, 8), VAR: (4, 0), DATASEC: (0, 12), DECL_TAG: (4, 0),
          ENUM64: (0, 12)}
# Kinds that only qualify or rename another type
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)
_NAMED_KINDS = (STRUCT, UNION, ENUM, ENUM64, TYPEDEF, FUNC)


class BTFError(Exception):
    pass


class Member:
    """Where a (possibly nested) struct member lives."""

    __slots__ = ("byte_offset", "size", "bit_shift", "bit_size")

    def __init__(self, byte_offset, size, bit_shift=0, bit_size=0):
        self.byte_offset = byte_offset
        self.size = size            # bytes to read
        self.bit_shift = bit_shift  # for bitfields: shift after reading
        self.bit_size = bit_size    # 0 when not a bitfield

    def __repr__(self):
        if self.bit_size:
            return "Member(off=%d, size=%d, bits=%d:%d)" % (
                self.byte_offset, self.size, self.bit_shift, self.bit_size)
        return "Member(off=%d, size=%d)" % (self.byte_offset, self.size)


def remembered(question):
    """A BTF question whose answers (errors included) the blob's AnswerCache
    keeps: a tracer start after the first parses no BTF."""
    name = question.__name__

    @functools.wraps(question)
    def ask(self, *args):
        key = (name,) + args
        found = self._answers.get(key)
        if found is None:
            try:
                found = ("answer", question(self, *args))
            except BTFError as e:
                found = ("error", str(e))
            self._answers.put(key, found)
        kind, value = found
        if kind == "error":
            raise BTFError(value)
        return value
    return ask


class AnswerCache:
    """The answers one BTF blob gave, in CACHE_DIR under the blob's digest.

    Parsing vmlinux's BTF costs ~0.2 s natively and ~5 s in a TCG guest, and
    a start asks it only a few hundred questions. CACHE_DIR is a tmpfs (gone
    at reboot); a file is named by the SHA-256 of the blob (and its base's),
    so it cannot answer for another kernel or module; it is read only from a
    directory and file of our own user that nobody else may write."""

    def __init__(self, data, base_digest=""):
        self.digest = hashlib.sha256(base_digest.encode() + data).hexdigest()
        self._answers = {}
        self._new = False
        self._path = None
        if CACHE_DIR and _private(CACHE_DIR, make=True):
            self._path = os.path.join(CACHE_DIR, "btf-%s.pickle" % self.digest[:32])
            if _private(self._path):
                try:
                    with open(self._path, "rb") as f:
                        self._answers = pickle.load(f)
                except (OSError, pickle.PickleError, EOFError, ValueError, TypeError,
                        AttributeError):
                    self._answers = {}

    def get(self, key):
        return self._answers.get(key)

    def put(self, key, found):
        self._answers[key] = found
        if self._path and not self._new:
            atexit.register(self.save)
        self._new = True

    def save(self):
        """Write the answers (atomically: two tracers may end at once)."""
        if not self._new or not self._path:
            return
        temporary = "%s.%d" % (self._path, os.getpid())
        try:
            with open(temporary, "wb") as f:
                pickle.dump(self._answers, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(temporary, self._path)
            self._new = False
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _private(path, make=False):
    """Is path ours and writable by nobody else (made 0700 if make and absent)?"""
    try:
        if make and not os.path.lexists(path):
            os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022 and not stat.S_ISLNK(st.st_mode)


class BTF:
    """Types of one BTF blob, optionally stacked on a base (vmlinux)."""

    def __init__(self, data, base=None):
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", data, 0)
        if magic != BTF_MAGIC:
            raise BTFError("not a little-endian BTF blob")
        self.base = base
        self._data = data
        self._strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self._str_base = len(base._strings) + base._str_base if base else 0
        self._type_span = (hdr_len + type_off, hdr_len + type_off + type_len)
        # per type: (kind, kind_flag, vlen, name_off, size_or_type, extra_pos);
        # None until a question the answers kept do not hold needs them
        self._types = None
        self._by_name = None
        self._answers = AnswerCache(data, base._answers.digest if base else "")

    @classmethod
    def load(cls, path, base=None):
        with open(path, "rb") as f:
            return cls(f.read(), base)

    def _scanned(self):
        if self._types is None:
            self._first_id = self.base.next_id if self.base else 1
            self._types, self._by_name = [], {}
            self._scan(*self._type_span)
        return self._types

    @property
    def next_id(self):
        types = self._scanned()
        return self._first_id + len(types)

    def _scan(self, pos, end):
        data, unpack = self._data, struct.unpack_from
        types, by_name = self._types, self._by_name
        type_id = self._first_id
        while pos < end:
            name_off, info, size_type = unpack("<III", data, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            fixed, per_item = _EXTRA.get(kind, (0, 0))
            types.append((kind, info >> 31, vlen, name_off, size_type, pos + 12))
            if name_off and kind in _NAMED_KINDS:
                by_name.setdefault(self.string(name_off), []).append(type_id)
            pos += 12 + fixed + per_item * vlen
            type_id += 1

    # --- primitive access -------------------------------------------------

    def string(self, offset):
        if offset < self._str_base:
            return self.base.string(offset)
        offset -= self._str_base
        return self._strings[offset: self._strings.index(b"\0", offset)].decode()

    def _type(self, type_id):
        self._scanned()
        if type_id < self._first_id:
            return self.base._type(type_id)
        return self._types[type_id - self._first_id]

    def _owner(self, type_id):
        self._scanned()
        return self.base._owner(type_id) if type_id < self._first_id else self

    @remembered
    def find(self, name, kinds):
        """Type id of the first type called name with one of kinds, or None."""
        self._scanned()
        for type_id in self._by_name.get(name, ()):
            if self._type(type_id)[0] in kinds:
                return type_id
        return self.base.find(name, kinds) if self.base else None

    def resolve(self, type_id):
        """Skip typedefs and qualifiers."""
        while type_id and self._type(type_id)[0] in _MODIFIERS:
            type_id = self._type(type_id)[4]
        return type_id

    def size_of(self, type_id):
        type_id = self.resolve(type_id)
        kind, _kf, _vlen, _name, size_type, pos = self._type(type_id)
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _index, count = struct.unpack_from("<III", self._owner(type_id)._data, pos)
            return self.size_of(elem) * count
        return size_type

    def _members(self, type_id):
        kind, kind_flag, vlen, _name, _size, pos = self._type(type_id)
        data = self._owner(type_id)._data
        for i in range(vlen):
            name_off, member_type, offset = struct.unpack_from("<III", data, pos + 12 * i)
            if kind_flag:
                yield self.string(name_off), member_type, offset & 0xFFFFFF, offset >> 24
            else:
                yield self.string(name_off), member_type, offset, 0

    # --- what skbtracer asks ----------------------------------------------

    @remembered
    def struct_id(self, name):
        type_id = self.find(name, (STRUCT, UNION, TYPEDEF))
        type_id = self.resolve(type_id) if type_id else None
        if not type_id or self._type(type_id)[0] not in (STRUCT, UNION):
            raise BTFError("no struct %s in BTF" % name)
        return type_id

    def _find_member(self, type_id, name):
        """(bit offset, bitfield size, member type) of name, looking inside
        anonymous unions and structs; None when absent."""
        for member_name, member_type, bit_off, bit_size in self._members(type_id):
            if member_name == name:
                return bit_off, bit_size, member_type
            if not member_name:
                inner = self.resolve(member_type)
                if self._type(inner)[0] in (STRUCT, UNION):
                    found = self._find_member(inner, name)
                    if found:
                        return found[0] + bit_off, found[1], found[2]
        return None

    @remembered
    def member(self, struct_name, path):
        """Layout of struct_name.path, where path may cross nested structs
        ("nd_net.net", "ns.inum")."""
        type_id = self.struct_id(struct_name)
        bit_off = 0
        bit_size = 0
        member_type = type_id
        for part in path.split("."):
            type_id = self.resolve(member_type)
            if self._type(type_id)[0] not in (STRUCT, UNION):
                raise BTFError("%s.%s: %s is not a struct" % (struct_name, path, part))
            found = self._find_member(type_id, part)
            if not found:
                raise BTFError("no member %s.%s in BTF" % (struct_name, path))
            bit_off += found[0]
            bit_size, member_type = found[1], found[2]
        if bit_size:
            # read the byte(s) holding the bitfield, then shift and mask
            first_byte = bit_off // 8
            last_byte = (bit_off + bit_size - 1) // 8
            return Member(first_byte, last_byte - first_byte + 1, bit_off % 8, bit_size)
        return Member(bit_off // 8, self.size_of(member_type))

    def _proto_params(self, proto):
        _kind, _kf, vlen, _name, _ret, pos = self._type(proto)
        data = self._owner(proto)._data
        params = []
        for i in range(vlen):
            name_off, param_type = struct.unpack_from("<II", data, pos + 8 * i)
            params.append((self.string(name_off), param_type))
        return params

    @remembered
    def func_params(self, func_name):
        """[(name, type_id)] of a function's parameters, or None."""
        type_id = self.find(func_name, (FUNC,))
        if not type_id:
            return None
        return self._proto_params(self._type(type_id)[4])

    @remembered
    def typedef_func_params(self, typedef_name):
        """Parameters of a typedef'd function pointer (btf_trace_<event>)."""
        type_id = self.find(typedef_name, (TYPEDEF,))
        if not type_id:
            return None
        ptr = self.resolve(type_id)
        if self._type(ptr)[0] != PTR:
            return None
        proto = self.resolve(self._type(ptr)[4])
        if self._type(proto)[0] != FUNC_PROTO:
            return None
        return self._proto_params(proto)

    def functions(self):
        """(name, [(param name, type_id)]) of every function this blob itself
        describes (a module's own, not its base's)."""
        for kind, _kf, _vlen, name_off, proto, _pos in self._scanned():
            if kind == FUNC and name_off:
                yield self.string(name_off), self._proto_params(proto)

    @remembered
    def type_name(self, type_id):
        """Name of a type after skipping typedefs/qualifiers ('' if anonymous)."""
        type_id = self.resolve(type_id)
        return self.string(self._type(type_id)[3]) if type_id else ""

    @remembered
    def pointee_struct(self, type_id):
        """For a parameter type: (struct name, pointer depth) it points to,
        e.g. ("sk_buff", 2) for struct sk_buff **; (None, depth) otherwise."""
        depth = 0
        type_id = self.resolve(type_id)
        while type_id and self._type(type_id)[0] == PTR:
            depth += 1
            type_id = self.resolve(self._type(type_id)[4])
        if type_id and self._type(type_id)[0] in (STRUCT, UNION, FWD):
            return self.string(self._type(type_id)[3]), depth
        return None, depth

    @remembered
    def enum_values(self, enum_name):
        """{value: enumerator name} of an enum, or None when absent."""
        type_id = self.find(enum_name, (ENUM, ENUM64))
        if not type_id:
            return None
        kind, kind_flag, vlen, _name, _size, pos = self._type(type_id)
        data = self._owner(type_id)._data
        values = {}
        for i in range(vlen):
            # kind_flag marks a signed enum (BTF since 6.0); unsigned otherwise
            if kind == ENUM:
                name_off, value = struct.unpack_from("<Ii" if kind_flag else "<II", data, pos + 8 * i)
            else:
                name_off, low, high = struct.unpack_from("<III", data, pos + 12 * i)
                value = low | (high << 32)
                if kind_flag and value >= 1 << 63:
                    value -= 1 << 64
            values[value] = self.string(name_off)
        return values


class KernelBTF:
    """vmlinux BTF plus module BTF loaded on demand."""

    def __init__(self, btf_dir=BTF_DIR):
        self.dir = btf_dir
        self.vmlinux = BTF.load(os.path.join(btf_dir, "vmlinux"))
        self._modules = {}

    @staticmethod
    def available(btf_dir=BTF_DIR):
        return os.path.exists(os.path.join(btf_dir, "vmlinux"))

    def module(self, name):
        """BTF of a loaded module (stacked on vmlinux), or None."""
        if name not in self._modules:
            path = os.path.join(self.dir, name)
            try:
                self._modules[name] = BTF.load(path, self.vmlinux) if name != "vmlinux" else None
            except (OSError, BTFError, struct.error):
                self._modules[name] = None
        return self._modules[name]

    def for_symbol(self, module):
        """The BTF that describes a symbol living in module (None = vmlinux)."""
        if module:
            return self.module(module) or self.vmlinux
        return self.vmlinux

    def member(self, struct_name, path, module=None):
        """Like BTF.member, falling back to vmlinux for core structs."""
        return self.for_symbol(module).member(struct_name, path)
