/*
 * What Python tells a Formatter when it is made (textrow.c_spec()): the
 * event's layout, the row's format and words, the numbers it shares with
 * reader.py. Read once and checked against what this code can write: a
 * spec it cannot follow is a ValueError, never a wrong row.
 */
#include "_rows.h"

#include <arpa/inet.h>
#include <string.h>

static PyObject *item(PyObject *dict, const char *key)
{
    PyObject *value = PyDict_GetItemString(dict, key);     /* borrowed */
    if (!value && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "rows spec: no %s", key);
    return value;
}

static int read_int(PyObject *dict, const char *key, long long min, long long max,
                    long long *out)
{
    PyObject *value = item(dict, key);
    if (!value)
        return -1;
    long long v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < min || v > max) {
        PyErr_Format(PyExc_ValueError, "rows spec: %s = %lld, not %lld..%lld", key, v, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

/* text (a str) as UTF-8, kept in spec->texts */
static int read_piece(Spec *spec, PyObject *text, Piece *piece)
{
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_ValueError, "rows spec: a text that is not a str");
        return -1;
    }
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &len);
    if (!utf8)
        return -1;
    /* PIECE_SLACK zeros after it: short pieces are copied in one move of that size */
    PyObject *bytes = PyBytes_FromStringAndSize(NULL, len + PIECE_SLACK);
    if (!bytes || PyList_Append(spec->texts, bytes) < 0) {
        Py_XDECREF(bytes);
        return -1;
    }
    memcpy(PyBytes_AS_STRING(bytes), utf8, len);
    memset(PyBytes_AS_STRING(bytes) + len, 0, PIECE_SLACK);
    piece->text = PyBytes_AS_STRING(bytes);
    piece->len = len;
    piece->chars = PyUnicode_GET_LENGTH(text);
    Py_DECREF(bytes);           /* spec->texts holds it */
    return 0;
}

static int read_text(Spec *spec, PyObject *dict, const char *key, Piece *piece)
{
    PyObject *text = item(dict, key);
    return text ? read_piece(spec, text, piece) : -1;
}

/* n texts: dict[key], a tuple of exactly n str */
static int read_pieces(Spec *spec, PyObject *dict, const char *key, Piece *pieces, Py_ssize_t n)
{
    PyObject *texts = item(dict, key);
    if (!texts)
        return -1;
    if (!PyTuple_Check(texts) || PyTuple_GET_SIZE(texts) != n) {
        PyErr_Format(PyExc_ValueError, "rows spec: %s is not %zd texts", key, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (read_piece(spec, PyTuple_GET_ITEM(texts, i), &pieces[i]) < 0)
            return -1;
    return 0;
}

static Py_ssize_t longest(const Piece *pieces, Py_ssize_t n)
{
    Py_ssize_t most = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (pieces[i].len > most)
            most = pieces[i].len;
    return most;
}

/* fields[name] = (offset, size, network order): where the field is, of
 * the size and byte order this code reads (size 0: any, into *size_out) */
static int read_field(Spec *spec, PyObject *fields, const char *name, Py_ssize_t size,
                      int network, Py_ssize_t *at, Py_ssize_t *size_out)
{
    PyObject *field = item(fields, name);
    long long offset, got;
    int net;
    if (!field)
        return -1;
    if (!PyArg_ParseTuple(field, "LLp", &offset, &got, &net))
        return -1;
    if (offset < 0 || got <= 0 || offset + got > spec->event_size ||
        (size && got != size) || net != network) {
        PyErr_Format(PyExc_ValueError, "rows spec: field %s (at %lld, %lld bytes%s) is not what "
                     "the rows in C read", name, offset, got, net ? ", network order" : "");
        return -1;
    }
    *at = (Py_ssize_t)offset;
    if (size_out)
        *size_out = (Py_ssize_t)got;
    return 0;
}

static int read_fields(Spec *spec, PyObject *dict)
{
    PyObject *fields = item(dict, "fields");
    if (!fields)
        return -1;
    if (!PyDict_Check(fields)) {
        PyErr_SetString(PyExc_ValueError, "rows spec: fields is not a dict");
        return -1;
    }
    if (read_field(spec, fields, "ts_ns", 8, 0, &spec->ts_ns, NULL) < 0 ||
        read_field(spec, fields, "skb", 8, 0, &spec->skb, NULL) < 0 ||
        read_field(spec, fields, "netns", 4, 0, &spec->netns, NULL) < 0 ||
        read_field(spec, fields, "stack_id", 4, 0, &spec->stack_id, NULL) < 0 ||
        read_field(spec, fields, "sport", 2, 1, &spec->sport, NULL) < 0 ||
        read_field(spec, fields, "dport", 2, 1, &spec->dport, NULL) < 0 ||
        read_field(spec, fields, "family", 1, 0, &spec->family, NULL) < 0 ||
        read_field(spec, fields, "l4proto", 1, 0, &spec->l4proto, NULL) < 0 ||
        read_field(spec, fields, "tcp_flags", 1, 0, &spec->tcp_flags, NULL) < 0 ||
        read_field(spec, fields, "icmp_type", 1, 0, &spec->icmp_type, NULL) < 0 ||
        read_field(spec, fields, "ifname", 0, 0, &spec->ifname, &spec->ifname_size) < 0 ||
        read_field(spec, fields, "dmac", 0, 0, &spec->dmac, &spec->dmac_size) < 0 ||
        read_field(spec, fields, "saddr", 16, 0, &spec->saddr, NULL) < 0 ||
        read_field(spec, fields, "daddr", 16, 0, &spec->daddr, NULL) < 0)
        return -1;
    if (spec->ifname_size > 64 || spec->dmac_size > 32) {
        PyErr_SetString(PyExc_ValueError, "rows spec: ifname or dmac longer than the rows in C "
                        "make room for");
        return -1;
    }
    return 0;
}

/* The spans in offset order, neighbours joined: fewer copies per key */
static void join_spans(Spec *spec)
{
    int n = spec->trace_count, joined = 0;
    for (int i = 1; i < n; i++)         /* insertion sort: a dozen spans at most */
        for (int j = i; j > 0 && spec->trace_at[j - 1] > spec->trace_at[j]; j--) {
            Py_ssize_t at = spec->trace_at[j], size = spec->trace_size[j];
            spec->trace_at[j] = spec->trace_at[j - 1], spec->trace_size[j] = spec->trace_size[j - 1];
            spec->trace_at[j - 1] = at, spec->trace_size[j - 1] = size;
        }
    for (int i = 0; i < n; i++) {
        if (joined && spec->trace_at[joined - 1] + spec->trace_size[joined - 1] == spec->trace_at[i]) {
            spec->trace_size[joined - 1] += spec->trace_size[i];
            continue;
        }
        spec->trace_at[joined] = spec->trace_at[i];
        spec->trace_size[joined++] = spec->trace_size[i];
    }
    spec->trace_count = joined;
}

/* trace_fields: ((offset, size), ...), whose bytes together key TRACE_INFO */
static int read_trace_fields(Spec *spec, PyObject *dict)
{
    PyObject *spans = item(dict, "trace_fields");
    if (!spans)
        return -1;
    Py_ssize_t n = PyTuple_Check(spans) ? PyTuple_GET_SIZE(spans) : -1;
    if (n < 0 || n > TRACE_FIELDS_MAX) {
        PyErr_SetString(PyExc_ValueError, "rows spec: trace_fields is not a tuple of spans");
        return -1;
    }
    Py_ssize_t key_size = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t at, size;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(spans, i), "nn", &at, &size))
            return -1;
        key_size += size;
        if (at < 0 || size <= 0 || at + size > spec->event_size || key_size > TAIL_KEY_SIZE) {
            PyErr_SetString(PyExc_ValueError, "rows spec: trace_fields out of the event, "
                            "or more bytes than TAIL_KEY_SIZE");
            return -1;
        }
        spec->trace_at[i] = at;
        spec->trace_size[i] = size;
    }
    spec->trace_count = (int)n;
    join_spans(spec);
    return 0;
}

static int read_format(Spec *spec, PyObject *dict)
{
    PyObject *widths = item(dict, "row_widths");
    if (!widths)
        return -1;
    if (!PyTuple_Check(widths) || PyTuple_GET_SIZE(widths) != ROW_COLUMNS) {
        PyErr_SetString(PyExc_ValueError, "rows spec: row_widths is not 5 widths");
        return -1;
    }
    for (int i = 0; i < ROW_COLUMNS; i++) {
        long width = PyLong_AsLong(PyTuple_GET_ITEM(widths, i));
        if ((width == -1 && PyErr_Occurred()) || width < 0 || width > 255) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "rows spec: a width that is not 0..255");
            return -1;
        }
        spec->row_widths[i] = (int)width;
    }
    Piece wall;
    long long digits;
    if (read_pieces(spec, dict, "row_literals", spec->row_literals, ROW_COLUMNS + 2) < 0 ||
        read_pieces(spec, dict, "ports_literals", spec->ports_literals, 6) < 0 ||
        read_pieces(spec, dict, "addresses_literals", spec->addresses_literals, 4) < 0 ||
        read_text(spec, dict, "wall_format", &wall) < 0 ||
        read_int(dict, "relative_digits", 0, 9, &digits) < 0)
        return -1;
    if (wall.len >= (Py_ssize_t)sizeof spec->wall_format) {
        PyErr_SetString(PyExc_ValueError, "rows spec: wall_format too long");
        return -1;
    }
    memcpy(spec->wall_format, wall.text, wall.len + 1);
    spec->relative_digits = (int)digits;
    return 0;
}

static int read_words(Spec *spec, PyObject *dict)
{
    long long tcp, udp, icmp4, icmp6;
    if (read_int(dict, "tcp", 0, 255, &tcp) < 0 || read_int(dict, "udp", 0, 255, &udp) < 0 ||
        read_int(dict, "icmp4", 0, 255, &icmp4) < 0 ||
        read_int(dict, "icmp6", 0, 255, &icmp6) < 0 ||
        read_pieces(spec, dict, "tcp_prefixes", spec->tcp_prefixes, 256) < 0 ||
        read_pieces(spec, dict, "udp_prefixes", spec->udp_prefixes, 256) < 0 ||
        read_pieces(spec, dict, "icmp4_prefixes", spec->icmp4_prefixes, 256) < 0 ||
        read_pieces(spec, dict, "icmp6_prefixes", spec->icmp6_prefixes, 256) < 0 ||
        read_pieces(spec, dict, "other_prefixes", spec->other_prefixes, 256) < 0 ||
        read_pieces(spec, dict, "name_bytes", spec->name_bytes, 256) < 0)
        return -1;
    spec->tcp = (int)tcp, spec->udp = (int)udp;
    spec->icmp4 = (int)icmp4, spec->icmp6 = (int)icmp6;
    Py_ssize_t prefix = 0;
    const Piece *tables[] = {spec->tcp_prefixes, spec->udp_prefixes, spec->icmp4_prefixes,
                             spec->icmp6_prefixes, spec->other_prefixes};
    for (int i = 0; i < 5; i++)
        if (longest(tables[i], 256) > prefix)
            prefix = longest(tables[i], 256);
    /* the prefix, two addresses, two ports and the text between them */
    spec->longest_info = prefix + 2 * INET6_ADDRSTRLEN + 2 * 5 +
                         6 * longest(spec->ports_literals, 6) +
                         4 * longest(spec->addresses_literals, 4);
    spec->longest_name_byte = longest(spec->name_bytes, 256);
    for (int b = 0; b < 256; b++)
        spec->name_plain[b] = spec->name_bytes[b].len == 1 &&
                              (unsigned char)spec->name_bytes[b].text[0] == b;
    if (spec->longest_info + PIECE_SLACK > INFO_SIZE) {
        PyErr_SetString(PyExc_ValueError, "rows spec: PKT_INFO's words too long");
        return -1;
    }
    return 0;
}

static int read_numbers(Spec *spec, PyObject *dict)
{
    long long end, busy, slow, count, rb_busy, rb_discard, rb_header;
    if (read_int(dict, "stop_end", INT32_MIN, INT32_MAX, &end) < 0 ||
        read_int(dict, "stop_busy", INT32_MIN, INT32_MAX, &busy) < 0 ||
        read_int(dict, "stop_slow", INT32_MIN, INT32_MAX, &slow) < 0 ||
        read_int(dict, "stop_count", INT32_MIN, INT32_MAX, &count) < 0 ||
        read_int(dict, "ringbuf_busy", 1, UINT32_MAX, &rb_busy) < 0 ||
        read_int(dict, "ringbuf_discard", 1, UINT32_MAX, &rb_discard) < 0 ||
        read_int(dict, "ringbuf_header", 4, 64, &rb_header) < 0)
        return -1;
    spec->stop_end = (int)end, spec->stop_busy = (int)busy;
    spec->stop_slow = (int)slow, spec->stop_count = (int)count;
    spec->ringbuf_busy = (uint32_t)rb_busy, spec->ringbuf_discard = (uint32_t)rb_discard;
    spec->ringbuf_header = (Py_ssize_t)rb_header;
    return 0;
}

/* Bytes a row may take at most, but its time, PKT_INFO, TRACE_INFO and stack */
static Py_ssize_t row_room(const Spec *s)
{
    Py_ssize_t room = 64 + PIECE_SLACK + 2 * s->dmac_size + s->ifname_size * s->longest_name_byte;
    for (int i = 0; i < ROW_COLUMNS + 2; i++)
        room += s->row_literals[i].len;
    for (int i = 0; i < ROW_COLUMNS; i++)
        room += s->row_widths[i];
    return room;
}

int spec_read(Spec *spec, PyObject *dict)
{
    spec_clear(spec);
    if (!PyDict_Check(dict)) {
        PyErr_SetString(PyExc_TypeError, "rows spec: not a dict (textrow.c_spec())");
        return -1;
    }
    long long event_size;
    if (!(spec->texts = PyList_New(0)) ||
        read_int(dict, "event_size", 1, 1 << 20, &event_size) < 0)
        return -1;
    spec->event_size = (Py_ssize_t)event_size;
    if (read_fields(spec, dict) < 0 || read_trace_fields(spec, dict) < 0 ||
        read_format(spec, dict) < 0 || read_words(spec, dict) < 0 || read_numbers(spec, dict) < 0)
        return -1;
    spec->row_room = row_room(spec);
    return 0;
}

void spec_clear(Spec *spec)
{
    Py_CLEAR(spec->texts);
    memset(spec, 0, sizeof *spec);
}
