/*
 * One text row, as textrow.RowFormatter.row writes it, from the raw event:
 * the columns in the order ROW_FORMAT has them, with the text, widths and
 * words Python handed over (Spec). The TRACE_INFO after the skb address
 * depends on few fields and repeats: Python makes each distinct one
 * (tail_of), this file keeps it.
 */
#include "_rows.h"

#include <arpa/inet.h>
#include <string.h>
#include <time.h>

static const char hex_digits[] = "0123456789abcdef";

static int text_reserve(Text *t, size_t more)
{
    if (t->len + more <= t->cap)
        return 0;
    size_t cap = t->cap ? t->cap : 1 << 16;
    while (cap < t->len + more)
        cap *= 2;
    char *grown = PyMem_Realloc(t->data, cap);
    if (!grown) {
        PyErr_NoMemory();
        return -1;
    }
    t->data = grown;
    t->cap = cap;
    return 0;
}

/* The key's spans are fields (joined where they touch): copies of a
 * known size, not a call to memcpy, for the usual sizes */
static inline void copy_span(unsigned char *to, const unsigned char *from, size_t n)
{
    if (n == 2)
        memcpy(to, from, 2);
    else if (n == 8)
        memcpy(to, from, 8);
    else if (n == 32)
        memcpy(to, from, 32);
    else
        memcpy(to, from, n);
}

static inline void put(Text *t, const char *s, size_t n)
{
    memcpy(t->data + t->len, s, n);
    t->len += n;
}

/* A piece into room reserved with PIECE_SLACK to spare: a short one in
 * one move of that size (what lands past it is overwritten or unused) */
static inline size_t piece_at(char *to, const Piece *p)
{
    if (p->len <= PIECE_SLACK)
        memcpy(to, p->text, PIECE_SLACK);
    else
        memcpy(to, p->text, (size_t)p->len);
    return (size_t)p->len;
}

static inline void put_piece(Text *t, const Piece *p)
{
    t->len += piece_at(t->data + t->len, p);
}

static inline void put_spaces(Text *t, Py_ssize_t n)
{
    if (n > 0) {
        memset(t->data + t->len, ' ', n);
        t->len += n;
    }
}

static inline void put_hex(Text *t, const unsigned char *bytes, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        t->data[t->len++] = hex_digits[bytes[i] >> 4];
        t->data[t->len++] = hex_digits[bytes[i] & 15];
    }
}

static inline uint16_t net16(const unsigned char *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* -t: the first event's time, shared with the Clock (whoever shows it first) */
static int first_time(Formatter *self, uint64_t ts_ns)
{
    PyObject *first = PyObject_GetAttrString(self->clock, "first_ns");
    if (!first)
        return -1;
    int failed = 0;
    if (first == Py_None) {
        PyObject *now = PyLong_FromUnsignedLongLong(ts_ns);
        failed = !now || PyObject_SetAttrString(self->clock, "first_ns", now) < 0;
        Py_XDECREF(now);
        self->first_ns = ts_ns;
    } else {
        self->first_ns = PyLong_AsUnsignedLongLong(first);
        failed = PyErr_Occurred() != NULL;
    }
    Py_DECREF(first);
    if (failed)
        return -1;
    self->have_first = 1;
    return 0;
}

/* The time column (without its padding), as textrow.Clock.column: the
 * wall-clock time (WALL_FORMAT), or seconds since the first event (-t). */
static int time_column(Formatter *self, uint64_t ts_ns, char *buf, size_t size)
{
    if (self->relative) {
        if (!self->have_first && first_time(self, ts_ns) < 0)
            return -1;
        /* exact differences either way, as Python's ints */
        double seconds = ts_ns >= self->first_ns ? (double)(ts_ns - self->first_ns) / 1e9
                                                  : -((double)(self->first_ns - ts_ns) / 1e9);
        int n = snprintf(buf, size, "%.*f", self->spec.relative_digits, seconds);
        return n < (int)size ? n : -1;
    }
    /* a time past what the clocks can hold is garbage: Python's turn */
    int64_t wall_ns;
    if (ts_ns > INT64_MAX || __builtin_add_overflow((int64_t)ts_ns, (int64_t)self->offset_ns,
                                                    &wall_ns) || wall_ns < 0)
        return -1;
    long long second = wall_ns / 1000000000LL;
    if (second != self->second || !self->second_text[0]) {
        time_t t = (time_t)second;
        struct tm tm;
        if (!localtime_r(&t, &tm) ||
            !strftime(self->second_text, sizeof self->second_text, self->spec.wall_format, &tm)) {
            self->second_text[0] = '\0';
            return -1;
        }
        self->second = second;
    }
    size_t n = strlen(self->second_text);
    if (n >= size)
        return -1;
    memcpy(buf, self->second_text, n);
    return (int)n;
}

/* decode.c_string: up to the NUL, each byte as the spec's name_bytes
 * shows it. Returns its characters. */
static Py_ssize_t put_name(Text *t, const Spec *spec, const unsigned char *raw, Py_ssize_t size)
{
    Py_ssize_t chars = 0;
    for (Py_ssize_t i = 0; i < size && raw[i]; i++) {
        if (spec->name_plain[raw[i]]) {             /* most bytes of most names */
            t->data[t->len++] = (char)raw[i];
            chars++;
            continue;
        }
        const Piece *shown = &spec->name_bytes[raw[i]];
        put_piece(t, shown);
        chars += shown->chars;
    }
    return chars;
}

/* Decimal of v at p (snprintf's "%u", at a fraction of its cost); its length. */
static inline size_t decimal(char *p, uint32_t v)
{
    char digits[10];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        p[i] = digits[n - 1 - i];
    return n;
}

static inline size_t hex64(char *p, uint64_t v)
{
    char digits[16];
    size_t n = 0;
    do {
        digits[n++] = hex_digits[v & 15];
        v >>= 4;
    } while (v);
    for (size_t i = 0; i < n; i++)
        p[i] = digits[n - 1 - i];
    return n;
}

/* An address as inet_ntop() writes it (dotted quad by hand: it is most rows) */
static size_t address(char *p, int family, const unsigned char *raw)
{
    if (family != 4) {
        if (!inet_ntop(AF_INET6, raw, p, INET6_ADDRSTRLEN))
            return 0;
        return strlen(p);
    }
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        if (i)
            p[n++] = '.';
        n += decimal(p + n, raw[i]);
    }
    return n;
}

/* A piece at p; *wide counts its bytes past one per character */
static inline size_t text(char *p, const Piece *piece, Py_ssize_t *wide)
{
    *wide += piece->len - piece->chars;
    return piece_at(p, piece);
}

/* textrow.protocol_prefix, from the spec's tables */
static const Piece *protocol_prefix(const Spec *s, const unsigned char *e)
{
    int family = e[s->family], l4 = e[s->l4proto];
    if (l4 == s->tcp)
        return &s->tcp_prefixes[e[s->tcp_flags]];
    if (l4 == s->udp)
        return &s->udp_prefixes[e[s->tcp_flags]];
    if (family == 4 && l4 == s->icmp4)
        return &s->icmp4_prefixes[e[s->icmp_type]];
    if (family == 6 && l4 == s->icmp6)
        return &s->icmp6_prefixes[e[s->icmp_type]];
    return &s->other_prefixes[l4];
}

/* textrow.pkt_info into buf (spec->longest_info bytes at most); its length
 * in bytes, and in characters (*chars) */
static size_t pkt_info(const Spec *s, const unsigned char *e, char *buf, Py_ssize_t *chars)
{
    int family = e[s->family], l4 = e[s->l4proto];
    Py_ssize_t wide = 0;
    size_t n = 0;
    if (l4 == s->tcp || l4 == s->udp) {        /* PORTS_INFO */
        const Piece *between = s->ports_literals;
        n += text(buf + n, &between[0], &wide);
        n += text(buf + n, protocol_prefix(s, e), &wide);
        n += text(buf + n, &between[1], &wide);
        n += address(buf + n, family, e + s->saddr);
        n += text(buf + n, &between[2], &wide);
        n += decimal(buf + n, net16(e + s->sport));
        n += text(buf + n, &between[3], &wide);
        n += address(buf + n, family, e + s->daddr);
        n += text(buf + n, &between[4], &wide);
        n += decimal(buf + n, net16(e + s->dport));
        n += text(buf + n, &between[5], &wide);
    } else {                                    /* ADDRESSES_INFO */
        const Piece *between = s->addresses_literals;
        n += text(buf + n, &between[0], &wide);
        n += text(buf + n, protocol_prefix(s, e), &wide);
        n += text(buf + n, &between[1], &wide);
        n += address(buf + n, family, e + s->saddr);
        n += text(buf + n, &between[2], &wide);
        n += address(buf + n, family, e + s->daddr);
        n += text(buf + n, &between[3], &wide);
    }
    *chars = (Py_ssize_t)n - wide;
    return n;
}

/* Characters of UTF-8 text (its bytes but continuation bytes) */
static Py_ssize_t utf8_chars(const char *p, Py_ssize_t n)
{
    Py_ssize_t chars = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        chars += ((unsigned char)p[i] & 0xC0) != 0x80;
    return chars;
}

void clear_tails(Formatter *self)
{
    for (size_t i = 0; i < TAIL_SLOTS; i++)
        Py_CLEAR(self->tails[i].text);
    self->tails_used = 0;
}

static inline uint64_t hash_key(const unsigned char *key)
{
    uint64_t h = 0;
    for (int i = 0; i < TAIL_KEY_SIZE; i += 8) {
        h = (h ^ host64(key + i)) * 0x9E3779B97F4A7C15ULL;
        h ^= h >> 29;
    }
    return h;
}

/* TRACE_INFO after the skb address, as UTF-8 bytes (borrowed), or NULL.
 * Keyed by the bytes of the fields it shows (textrow.TRACE_FIELDS). */
static PyObject *tail(Formatter *self, const unsigned char *e)
{
    const Spec *s = &self->spec;
    unsigned char key[TAIL_KEY_SIZE] = {0};
    for (int f = 0, at = 0; f < s->trace_count; at += s->trace_size[f], f++)
        copy_span(key + at, e + s->trace_at[f], (size_t)s->trace_size[f]);
    size_t mask = TAIL_SLOTS - 1, i = hash_key(key) & mask;
    for (; self->tails[i].text; i = (i + 1) & mask)
        if (!memcmp(self->tails[i].key, key, TAIL_KEY_SIZE))
            return self->tails[i].text;
    PyObject *raw = PyBytes_FromStringAndSize((const char *)e, s->event_size);
    if (!raw) {
        PyErr_Clear();          /* Python's path makes this row */
        return NULL;
    }
    PyObject *encoded = utf8_of(self->tail_of, raw);
    Py_DECREF(raw);
    if (!encoded)
        return NULL;
    if (self->tails_used >= TAIL_SLOTS / 2) {
        clear_tails(self);
        for (i = hash_key(key) & mask; self->tails[i].text; i = (i + 1) & mask)
            ;
    }
    memcpy(self->tails[i].key, key, TAIL_KEY_SIZE);
    self->tails[i].text = encoded;
    self->tails_used++;
    return encoded;
}

/* One row, as RowFormatter.row: 0, 1 for "Python's turn", -1 on error. */
int format_row(Formatter *self, const unsigned char *e)
{
    const Spec *s = &self->spec;
    PyObject *tail_text = tail(self, e);
    PyObject *stack = tail_text ? stack_lines(self, e) : NULL;
    if (!stack)
        return PyErr_Occurred() ? -1 : 1;
    Py_ssize_t stack_len = PyBytes_GET_SIZE(stack);
    char column[TIME_SIZE], info[INFO_SIZE], number[32];
    int column_len = time_column(self, host64(e + s->ts_ns), column, sizeof column);
    if (column_len < 0)
        return PyErr_Occurred() ? -1 : 1;
    Py_ssize_t info_chars, info_len = (Py_ssize_t)pkt_info(s, e, info, &info_chars);
    Py_ssize_t tail_len = PyBytes_GET_SIZE(tail_text);
    if (text_reserve(&self->out, s->row_room + column_len + info_len + tail_len + stack_len) < 0)
        return -1;
    Text *t = &self->out;
    const Piece *literal = s->row_literals;
    const int *width = s->row_widths;
    put_piece(t, &literal[0]);
    put(t, column, column_len);
    put_spaces(t, width[0] - utf8_chars(column, column_len));
    put_piece(t, &literal[1]);
    int n = (int)decimal(number, host32(e + s->netns));
    put(t, number, n);
    put_spaces(t, width[1] - n);
    put_piece(t, &literal[2]);
    put_spaces(t, width[2] - put_name(t, s, e + s->ifname, s->ifname_size));
    put_piece(t, &literal[3]);
    if (s->dmac_size == 6)          /* a MAC address: the loop unrolled */
        put_hex(t, e + s->dmac, 6);
    else
        put_hex(t, e + s->dmac, s->dmac_size);
    put_spaces(t, width[3] - 2 * s->dmac_size);
    put_piece(t, &literal[4]);
    put(t, info, info_len);
    put_spaces(t, width[4] - info_chars);
    put_piece(t, &literal[5]);
    t->len += hex64(t->data + t->len, host64(e + s->skb));    /* TRACE_INFO */
    put(t, PyBytes_AS_STRING(tail_text), tail_len);
    put_piece(t, &literal[6]);
    t->data[t->len++] = '\n';
    put(t, PyBytes_AS_STRING(stack), stack_len);
    return 0;
}

/* The rows text made so far, as bytes; the buffer starts again. */
PyObject *take_text(Formatter *self)
{
    PyObject *text = PyBytes_FromStringAndSize(self->out.data, self->out.len);
    self->out.len = 0;
    return text;
}
