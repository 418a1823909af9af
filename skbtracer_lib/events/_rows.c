/*
 * skbtracer's text rows in C: the ring buffer's records walked and their
 * rows formatted in one call per batch, for the plain text rows (the
 * default output), where Python's per-event work is the tracer's limit.
 *
 * output.RowFormatter is the reference: every byte this writes is what it
 * writes (tests/unit/test_fast_rows.py compares the two on the golden
 * corpus and on random events). Anything unusual goes back to Python, one
 * record at a time (STOP_SLOW): records shorter than struct event_t, and a
 * TRACE_INFO that Python could not make. The TRACE_INFO after the skb
 * address depends on few fields (the probe, the netfilter verdict, the drop
 * reason and location) and repeats: Python makes each distinct one
 * (tail_of), this file keeps it.
 *
 * Built by scripts/build-rows.sh (and the Debian package); without it,
 * output.py's Python path does the same work, slower.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* Bumped when what Python passes or expects changes: a stale build is not used. */
#define ROWS_ABI 1

/* struct event_t in skbtracer.c (events.py's EVENT), offsets in bytes */
#define EVENT_SIZE 200
#define AT_TS 0
#define AT_SKB 8
#define AT_LOCATION 16
#define AT_NETNS 24
#define AT_DROP_REASON 36
#define AT_VERDICT 40
#define AT_STACK_ID 44
#define AT_PROBE 56
#define AT_SPORT 60
#define AT_DPORT 62
#define AT_KIND 66
#define AT_PKT_TYPE 67
#define AT_FAMILY 68
#define AT_L4PROTO 69
#define AT_TCP_FLAGS 70
#define AT_ICMP_TYPE 71
#define AT_PF 73
#define AT_HOOK 74
#define AT_IFNAME 76
#define IFNAME_SIZE 16
#define AT_DMAC 92
#define AT_SADDR 104
#define AT_DADDR 120
#define AT_TABLE 136
#define TABLE_SIZE 32

#define KIND_IPTABLE 2
#define KIND_DROP 3

/* include/uapi/linux/bpf.h: a ring buffer record's header */
#define RINGBUF_BUSY (1u << 31)
#define RINGBUF_DISCARD (1u << 30)
#define RINGBUF_HEADER 8

/* why a walk stopped (reader.py has the same numbers) */
enum { STOP_END = 0, STOP_BUSY = 1, STOP_SLOW = 2, STOP_COUNT = 3 };

#define TAIL_KEY_SIZE 64
#define TAIL_SLOTS 8192          /* a power of two; emptied when half full */
#define STACK_CACHE_LIMIT 16384

typedef struct {
    char *data;
    size_t len, cap;
} Text;

/* the TRACE_INFOs made so far: an open-addressing table by tail_key() */
typedef struct {
    unsigned char key[TAIL_KEY_SIZE];
    PyObject *text;          /* UTF-8 bytes, owned; NULL: a free slot */
} TailSlot;

typedef struct {
    PyObject_HEAD
    PyObject *tail_of;       /* raw bytes -> str: TRACE_INFO after the skb address */
    TailSlot *tails;         /* TAIL_SLOTS of them */
    size_t tails_used;
    PyObject *clock;         /* output.Clock: -t shares first_ns with it */
    PyObject *stack_text;    /* stack id -> str, its lines (--callstack/--dropstack), or None */
    PyObject *stacks;        /* stack id (int) -> those lines, UTF-8 (bytes) */
    int all_stacks;          /* --callstack: a stack line even for "no stack" (-1) */
    long long offset_ns;     /* wall clock - CLOCK_MONOTONIC */
    int relative;
    int have_first;
    uint64_t first_ns;
    long long second;        /* the second second_text shows */
    char second_text[16];
    Text out;
} Formatter;

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

static inline void put(Text *t, const char *s, size_t n)
{
    memcpy(t->data + t->len, s, n);
    t->len += n;
}

static inline void put_spaces(Text *t, Py_ssize_t n)
{
    if (n > 0) {
        memset(t->data + t->len, ' ', n);
        t->len += n;
    }
}

static inline uint16_t net16(const unsigned char *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t host32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint64_t host64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* The time column (without its padding): HH:MM:SS of the wall clock, or
 * seconds since the first event (-t), as output.Clock.column. */
static int time_column(Formatter *self, uint64_t ts_ns, char *buf, size_t size)
{
    if (self->relative) {
        if (!self->have_first) {
            PyObject *first = PyObject_GetAttrString(self->clock, "first_ns");
            if (!first)
                return -1;
            if (first == Py_None) {
                PyObject *now = PyLong_FromUnsignedLongLong(ts_ns);
                if (!now || PyObject_SetAttrString(self->clock, "first_ns", now) < 0) {
                    Py_XDECREF(now);
                    Py_DECREF(first);
                    return -1;
                }
                Py_DECREF(now);
                self->first_ns = ts_ns;
            } else {
                self->first_ns = PyLong_AsUnsignedLongLong(first);
                if (PyErr_Occurred()) {
                    Py_DECREF(first);
                    return -1;
                }
            }
            Py_DECREF(first);
            self->have_first = 1;
        }
        /* exact differences either way, as Python's ints */
        double seconds = ts_ns >= self->first_ns ? (double)(ts_ns - self->first_ns) / 1e9
                                                  : -((double)(self->first_ns - ts_ns) / 1e9);
        return snprintf(buf, size, "%.6f", seconds);
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
            !strftime(self->second_text, sizeof self->second_text, "%H:%M:%S", &tm)) {
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

/* events._c_string: up to the NUL, non-ASCII bytes as U+FFFD, control
 * characters, space, backslash and DEL as \xNN. Returns its characters. */
static Py_ssize_t put_name(Text *t, const unsigned char *raw, size_t size)
{
    static const char hex[] = "0123456789abcdef";
    Py_ssize_t chars = 0;
    for (size_t i = 0; i < size && raw[i]; i++) {
        unsigned char c = raw[i];
        if (c >= 0x80) {
            put(t, "\xef\xbf\xbd", 3);
        } else if (c <= 0x20 || c == '\\' || c == 0x7f) {
            char esc[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
            put(t, esc, 4);
            chars += 3;
        } else {
            t->data[t->len++] = (char)c;
        }
        chars++;
    }
    return chars;
}

static const char *const tcp_flag_names[8] = {"CWR", "ECE", "URG", "ACK", "PSH", "RST", "SYN", "FIN"};

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
    static const char hex[] = "0123456789abcdef";
    char digits[16];
    size_t n = 0;
    do {
        digits[n++] = hex[v & 15];
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

static inline size_t text(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return n;
}

/* output.pkt_info into buf (room for the longest: 160 bytes); its length */
static size_t pkt_info(const unsigned char *e, char *buf)
{
    int family = e[AT_FAMILY], l4 = e[AT_L4PROTO];
    int ports = l4 == 6 || l4 == 17;
    size_t n = 0;
    if (l4 == 6) {
        n += text(buf, "T_", 2);
        int first = 1;
        for (int bit = 0; bit < 8; bit++) {
            if (e[AT_TCP_FLAGS] & (0x80 >> bit)) {
                if (!first)
                    buf[n++] = ',';
                n += text(buf + n, tcp_flag_names[bit], 3);
                first = 0;
            }
        }
        buf[n++] = ':';
    } else if (l4 == 17) {
        n += text(buf, "U:", 2);
    } else if ((family == 4 && l4 == 1) || (family == 6 && l4 == 58)) {
        int type = e[AT_ICMP_TYPE];
        int request = family == 4 ? type == 8 : type == 128;
        int reply = family == 4 ? type == 0 : type == 129;
        buf[n++] = 'I';
        if (request)
            n += text(buf + n, "_request", 8);
        else if (reply)
            n += text(buf + n, "_reply", 6);
        buf[n++] = ':';
    } else {
        n += decimal(buf, (uint32_t)l4);
        buf[n++] = ':';
    }
    n += address(buf + n, family, e + AT_SADDR);
    if (ports) {
        buf[n++] = ':';
        n += decimal(buf + n, net16(e + AT_SPORT));
    }
    n += text(buf + n, "->", 2);
    n += address(buf + n, family, e + AT_DADDR);
    if (ports) {
        buf[n++] = ':';
        n += decimal(buf + n, net16(e + AT_DPORT));
    }
    return n;
}

/* The fields TRACE_INFO (after the skb address) depends on, the rest zero:
 * RowFormatter.trace_after_skb reads these and no others. */
static void tail_key(const unsigned char *e, unsigned char *key)
{
    memset(key, 0, TAIL_KEY_SIZE);
    int kind = e[AT_KIND];
    key[0] = kind == KIND_IPTABLE || kind == KIND_DROP ? kind : 1;
    key[1] = e[AT_PKT_TYPE];
    if (kind == KIND_IPTABLE) {
        key[2] = e[AT_PF];
        key[3] = e[AT_HOOK];
        key[4] = e[AT_VERDICT];           /* the verdict is its low byte */
        memcpy(key + 32, e + AT_TABLE, TABLE_SIZE);
        return;
    }
    memcpy(key + 2, e + AT_PROBE, 2);
    if (kind == KIND_DROP) {
        memcpy(key + 4, e + AT_DROP_REASON, 4);
        memcpy(key + 8, e + AT_LOCATION, 8);
    }
}

/* make(argument) as UTF-8 bytes (a new reference); NULL with no exception
 * set when Python could not make it (its own path will say what is wrong). */
static PyObject *utf8_of(PyObject *make, PyObject *argument)
{
    PyObject *text = PyObject_CallOneArg(make, argument);
    PyObject *encoded = NULL;
    if (text && PyUnicode_Check(text))
        encoded = PyUnicode_AsEncodedString(text, "utf-8", "backslashreplace");
    Py_XDECREF(text);
    if (!encoded)
        PyErr_Clear();
    return encoded;
}

static void clear_tails(Formatter *self)
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

/* TRACE_INFO after the skb address, as UTF-8 bytes (borrowed), or NULL. */
static PyObject *tail(Formatter *self, const unsigned char *e)
{
    unsigned char key[TAIL_KEY_SIZE];
    tail_key(e, key);
    size_t mask = TAIL_SLOTS - 1, i = hash_key(key) & mask;
    for (; self->tails[i].text; i = (i + 1) & mask)
        if (!memcmp(self->tails[i].key, key, TAIL_KEY_SIZE))
            return self->tails[i].text;
    PyObject *raw = PyBytes_FromStringAndSize((const char *)e, EVENT_SIZE);
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

/* The event's stack lines (borrowed), b"" without, or NULL. A stack id
 * names one stack for the whole run (skbtracer.c asks without
 * BPF_F_REUSE_STACKID and nothing deletes): its lines are made once. */
static PyObject *stack_lines(Formatter *self, const unsigned char *e)
{
    static PyObject *none;
    int32_t stack_id = (int32_t)host32(e + AT_STACK_ID);
    if (self->stack_text == Py_None || (stack_id == -1 && !self->all_stacks)) {
        if (!none)
            none = PyBytes_FromStringAndSize("", 0);
        return none;
    }
    PyObject *id = PyLong_FromLong(stack_id);
    if (!id)
        return NULL;
    PyObject *lines = PyDict_GetItemWithError(self->stacks, id);
    if (!lines && !PyErr_Occurred() && (lines = utf8_of(self->stack_text, id))) {
        if (PyDict_GET_SIZE(self->stacks) >= STACK_CACHE_LIMIT)
            PyDict_Clear(self->stacks);
        int failed = PyDict_SetItem(self->stacks, id, lines);
        Py_DECREF(lines);       /* the dict holds it */
        if (failed)
            lines = NULL;
    }
    Py_DECREF(id);
    return lines;
}

/* The clock's offset as it is now (read per call, not per row: Python
 * code may set it, as the golden tests do). */
static int read_offset(Formatter *self)
{
    PyObject *offset = PyObject_GetAttrString(self->clock, "offset_ns");
    if (!offset)
        return -1;
    long long value = PyLong_AsLongLong(offset);
    Py_DECREF(offset);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value != self->offset_ns) {
        self->offset_ns = value;
        self->second_text[0] = '\0';       /* the second's text is another's now */
    }
    return 0;
}

/* One row, as RowFormatter.row: 0, 1 for "Python's turn", -1 on error. */
static int format_row(Formatter *self, const unsigned char *e)
{
    PyObject *tail_text = tail(self, e);
    PyObject *stack = tail_text ? stack_lines(self, e) : NULL;
    if (!stack)
        return PyErr_Occurred() ? -1 : 1;
    Py_ssize_t stack_len = PyBytes_GET_SIZE(stack);
    char column[64], info[160], number[32];
    int column_len = time_column(self, host64(e + AT_TS), column, sizeof column);
    if (column_len < 0)
        return PyErr_Occurred() ? -1 : 1;
    int info_len = (int)pkt_info(e, info);
    Py_ssize_t tail_len = PyBytes_GET_SIZE(tail_text);
    /* generous: every ifname byte escaped, padding included */
    if (text_reserve(&self->out, 128 + column_len + info_len + 4 * IFNAME_SIZE + tail_len +
                                 stack_len) < 0)
        return -1;
    Text *t = &self->out;
    t->data[t->len++] = '[';
    put(t, column, column_len);
    put_spaces(t, 8 - column_len);
    put(t, "][", 2);
    int n = (int)decimal(number, host32(e + AT_NETNS));
    put(t, number, n);
    put_spaces(t, 10 - n);
    put(t, "] ", 2);
    put_spaces(t, 12 - put_name(t, e + AT_IFNAME, IFNAME_SIZE));
    t->data[t->len++] = ' ';
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 6; i++) {
        t->data[t->len++] = hex[e[AT_DMAC + i] >> 4];
        t->data[t->len++] = hex[e[AT_DMAC + i] & 15];
    }
    t->data[t->len++] = ' ';
    put(t, info, info_len);
    put_spaces(t, 40 - info_len);
    t->data[t->len++] = ' ';
    t->len += hex64(t->data + t->len, host64(e + AT_SKB));
    put(t, PyBytes_AS_STRING(tail_text), tail_len);
    t->data[t->len++] = '\n';
    put(t, PyBytes_AS_STRING(stack), stack_len);
    return 0;
}

static int Formatter_init(Formatter *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"tail_of", "clock", "stack_text", "all_stacks", NULL};
    PyObject *tail_of, *clock, *stack_text = Py_None;
    int all_stacks = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|Op", names, &tail_of, &clock,
                                     &stack_text, &all_stacks))
        return -1;
    PyObject *relative = PyObject_GetAttrString(clock, "relative");
    if (!relative)
        return -1;
    self->relative = PyObject_IsTrue(relative);
    Py_DECREF(relative);
    if (self->relative < 0)
        return -1;
    Py_INCREF(tail_of);
    Py_XSETREF(self->tail_of, tail_of);
    Py_INCREF(clock);
    Py_XSETREF(self->clock, clock);
    Py_INCREF(stack_text);
    Py_XSETREF(self->stack_text, stack_text);
    self->all_stacks = all_stacks;
    if (self->tails)
        clear_tails(self);
    else if (!(self->tails = PyMem_Calloc(TAIL_SLOTS, sizeof(TailSlot)))) {
        PyErr_NoMemory();
        return -1;
    }
    Py_XSETREF(self->stacks, PyDict_New());
    self->second_text[0] = '\0';
    return self->stacks ? 0 : -1;
}

static void Formatter_dealloc(Formatter *self)
{
    Py_XDECREF(self->tail_of);
    if (self->tails) {
        clear_tails(self);
        PyMem_Free(self->tails);
    }
    Py_XDECREF(self->clock);
    Py_XDECREF(self->stack_text);
    Py_XDECREF(self->stacks);
    PyMem_Free(self->out.data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The rows text made so far, as bytes; the buffer starts again. */
static PyObject *take_text(Formatter *self)
{
    PyObject *text = PyBytes_FromStringAndSize(self->out.data, self->out.len);
    self->out.len = 0;
    return text;
}

PyDoc_STRVAR(ring_doc,
"ring(data, base, mask, position, producer, max_rows, max_records, keep)\n"
"-> (position, records, rows, text, raws, netns, stop)\n\n"
"Walk a BPF ring buffer's records from position to producer in data (its\n"
"data pages at offset base, mapped twice; mask = their size - 1), at most\n"
"max_records of them, formatting each event's row into text (UTF-8).\n"
"max_rows: rows still wanted (-1 any number, 0 none: records are only\n"
"passed over). keep: also the events' bytes (raws, a list) and the set of\n"
"their namespaces (netns), for the story; else both None. stop: why the\n"
"walk ended (STOP_*); STOP_SLOW leaves the record at position to Python.");

static PyObject *Formatter_ring(Formatter *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t base, max_records;
    unsigned long long mask, position, producer;
    long long max_rows;
    int keep;
    if (!PyArg_ParseTuple(args, "y*nKKKLnp", &view, &base, &mask, &position, &producer,
                          &max_rows, &max_records, &keep))
        return NULL;
    if (read_offset(self) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *data = view.buf;
    PyObject *raws = keep ? PyList_New(0) : NULL;
    PyObject *netns_seen = keep ? PySet_New(NULL) : NULL;
    uint32_t last_netns = 0;
    int have_netns = 0;
    Py_ssize_t records = 0, rows = 0;
    int stop = STOP_END;
    if (keep && (!raws || !netns_seen))
        goto error;
    while (records < max_records && position < producer) {
        size_t at = (size_t)base + (size_t)(position & mask);
        if (at + RINGBUF_HEADER > (size_t)view.len) {
            stop = STOP_SLOW;
            break;
        }
        uint32_t length = __atomic_load_n((const uint32_t *)(data + at), __ATOMIC_ACQUIRE);
        if (length & RINGBUF_BUSY) {
            stop = STOP_BUSY;     /* reserved, not committed: its commit wakes the reader */
            break;
        }
        if (!(length & RINGBUF_DISCARD) && max_rows != 0) {
            const unsigned char *e = data + at + RINGBUF_HEADER;
            if (length < EVENT_SIZE || at + RINGBUF_HEADER + length > (size_t)view.len) {
                stop = STOP_SLOW;
                break;
            }
            int made = format_row(self, e);
            if (made < 0)
                goto error;
            if (made > 0) {
                stop = STOP_SLOW;
                break;
            }
            rows++;
            if (keep) {
                PyObject *raw = PyBytes_FromStringAndSize((const char *)e, EVENT_SIZE);
                if (!raw || PyList_Append(raws, raw) < 0) {
                    Py_XDECREF(raw);
                    goto error;
                }
                Py_DECREF(raw);
                uint32_t netns = host32(e + AT_NETNS);
                if (!have_netns || netns != last_netns) {
                    PyObject *number = PyLong_FromUnsignedLong(netns);
                    if (!number || PySet_Add(netns_seen, number) < 0) {
                        Py_XDECREF(number);
                        goto error;
                    }
                    Py_DECREF(number);
                    last_netns = netns;
                    have_netns = 1;
                }
            }
        }
        position += ((length & ~RINGBUF_DISCARD) + RINGBUF_HEADER + 7) & ~7ULL;
        records++;
        if (max_rows > 0 && rows >= max_rows) {
            stop = STOP_COUNT;
            break;
        }
    }
    PyBuffer_Release(&view);
    PyObject *text = take_text(self);
    if (!text)
        goto error_released;
    if (!keep) {
        raws = Py_None;
        netns_seen = Py_None;
        Py_INCREF(raws);
        Py_INCREF(netns_seen);
    }
    return Py_BuildValue("KnnNNNi", position, records, rows, text, raws, netns_seen, stop);
error:
    PyBuffer_Release(&view);
error_released:
    self->out.len = 0;
    Py_XDECREF(raws);
    Py_XDECREF(netns_seen);
    return NULL;
}

PyDoc_STRVAR(row_doc, "row(raw) -> bytes: one event's row (UTF-8, with its newline), or None "
                      "where Python's path must make it");

static PyObject *Formatter_row(Formatter *self, PyObject *arg)
{
    Py_buffer view;
    if (read_offset(self) < 0 || PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int made = view.len >= EVENT_SIZE ? format_row(self, view.buf) : 1;
    PyBuffer_Release(&view);
    if (made < 0) {
        self->out.len = 0;
        return NULL;
    }
    if (made > 0)
        Py_RETURN_NONE;
    return take_text(self);
}

static PyMethodDef Formatter_methods[] = {
    {"ring", (PyCFunction)Formatter_ring, METH_VARARGS, ring_doc},
    {"row", (PyCFunction)Formatter_row, METH_O, row_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FormatterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "skbtracer_lib._rows.Formatter",
    .tp_doc = PyDoc_STR("Formatter(tail_of, clock, stack_text=None, all_stacks=False): "
                        "text rows of raw events"),
    .tp_basicsize = sizeof(Formatter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Formatter_init,
    .tp_dealloc = (destructor)Formatter_dealloc,
    .tp_methods = Formatter_methods,
};

static struct PyModuleDef rows_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_rows",
    .m_doc = "skbtracer's text rows in C (see output.py)",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__rows(void)
{
    if (PyType_Ready(&FormatterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&rows_module);
    if (!m)
        return NULL;
    Py_INCREF(&FormatterType);
    if (PyModule_AddObject(m, "Formatter", (PyObject *)&FormatterType) < 0 ||
        PyModule_AddIntConstant(m, "ABI", ROWS_ABI) < 0 ||
        PyModule_AddIntConstant(m, "EVENT_SIZE", EVENT_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "STOP_END", STOP_END) < 0 ||
        PyModule_AddIntConstant(m, "STOP_BUSY", STOP_BUSY) < 0 ||
        PyModule_AddIntConstant(m, "STOP_SLOW", STOP_SLOW) < 0 ||
        PyModule_AddIntConstant(m, "STOP_COUNT", STOP_COUNT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
