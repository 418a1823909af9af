/*
 * skbtracer's text rows in C: what the three files share. _rows.c is the
 * Python type (a Formatter: the ring walk, one row) and the calls into
 * Python a row may need (its TRACE_INFO, its stack), _rows_spec.c reads
 * what Python tells a Formatter when it is made (textrow.c_spec(): where
 * the event's fields are, the row's format and words, the numbers shared
 * with reader.py), _rows_text.c writes the rows.
 */
#ifndef SKBTRACER_ROWS_H
#define SKBTRACER_ROWS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

/* Bumped when what Python passes or expects changes: a stale build is not used. */
#define ROWS_ABI 5

#define ROW_COLUMNS 5            /* padded columns: time, netns, ifname, dmac, PKT_INFO */
#define TRACE_FIELDS_MAX 48
#define TAIL_KEY_SIZE 256        /* the bytes of the TRACE_INFO fields, at most */
#define TAIL_SLOTS 8192          /* a power of two; emptied when half full */
#define STACK_CACHE_LIMIT 16384
#define INFO_SIZE 512            /* PKT_INFO's buffer: the spec's longest must fit */
#define TIME_SIZE 64
#define PIECE_SLACK 16           /* zeros after each piece (and room after a row's text) */

/* A piece of text Python handed over (UTF-8, in Spec.texts, PIECE_SLACK
 * zeros after it) */
typedef struct {
    const char *text;
    Py_ssize_t len;
    Py_ssize_t chars;            /* its characters: what a column's padding counts */
} Piece;

/* textrow.c_spec(), read once */
typedef struct {
    Py_ssize_t event_size;
    /* offsets of the fields rows read (fields.FIELDS) */
    Py_ssize_t ts_ns, skb, netns, stack_id, sport, dport, family, l4proto, tcp_flags,
        icmp_type, ifname, dmac, saddr, daddr;
    Py_ssize_t ifname_size, dmac_size;
    /* the fields TRACE_INFO after the skb address shows: its cache's key */
    Py_ssize_t trace_at[TRACE_FIELDS_MAX], trace_size[TRACE_FIELDS_MAX];
    int trace_count;
    /* ROW_FORMAT: the text before each column (and after the last) and the widths */
    Piece row_literals[ROW_COLUMNS + 2];
    int row_widths[ROW_COLUMNS];
    /* PKT_INFO: PORTS_INFO's and ADDRESSES_INFO's text between the arguments */
    Piece ports_literals[6], addresses_literals[4];
    int tcp, udp, icmp4, icmp6;  /* protocol numbers */
    /* textrow.protocol_prefix: TCP's and UDP's by tcp_flags, ICMP's by type,
     * any other protocol's by its number */
    Piece tcp_prefixes[256], udp_prefixes[256], icmp4_prefixes[256], icmp6_prefixes[256],
        other_prefixes[256];
    Py_ssize_t longest_info;     /* PKT_INFO's length at most */
    Piece name_bytes[256];       /* a name's bytes as a row shows them */
    unsigned char name_plain[256];   /* 1: the byte shows as itself */
    Py_ssize_t longest_name_byte;
    Py_ssize_t row_room;         /* a row's bytes at most, but its time, PKT_INFO, tail, stack */
    char wall_format[32];        /* Clock.WALL_FORMAT */
    int relative_digits;
    int stop_end, stop_busy, stop_slow, stop_count;
    uint32_t ringbuf_busy, ringbuf_discard;
    Py_ssize_t ringbuf_header;
    PyObject *texts;             /* a list of the bytes the pieces point into */
} Spec;

typedef struct {
    char *data;
    size_t len, cap;
} Text;

/* the TRACE_INFOs made so far: an open-addressing table by their fields' bytes */
typedef struct {
    unsigned char key[TAIL_KEY_SIZE];
    PyObject *text;              /* UTF-8 bytes, owned; NULL: a free slot */
} TailSlot;

typedef struct {
    PyObject_HEAD
    Spec spec;
    PyObject *tail_of;           /* raw bytes -> str: TRACE_INFO after the skb address */
    TailSlot *tails;             /* TAIL_SLOTS of them */
    size_t tails_used;
    PyObject *clock;             /* textrow.Clock: -t shares first_ns with it */
    PyObject *stack_text;        /* stack id -> str, its lines (--callstack/--dropstack), or None */
    PyObject *stacks;            /* stack id (int) -> those lines, UTF-8 (bytes) */
    int all_stacks;              /* --callstack: a stack line even for "no stack" (-1) */
    long long offset_ns;         /* wall clock - CLOCK_MONOTONIC */
    int relative;
    int have_first;
    uint64_t first_ns;
    long long second;            /* the second second_text shows */
    char second_text[TIME_SIZE];
    Text out;
} Formatter;

/* _rows_spec.c */
int spec_read(Spec *spec, PyObject *dict);
void spec_clear(Spec *spec);

/* _rows.c: what calls Python for a row */
PyObject *utf8_of(PyObject *make, PyObject *argument);
PyObject *stack_lines(Formatter *self, const unsigned char *e);

/* _rows_text.c */
int format_row(Formatter *self, const unsigned char *e);
void clear_tails(Formatter *self);
PyObject *take_text(Formatter *self);

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

#endif
