/*
 * skbtracer's text rows in C: the ring buffer's records walked and their
 * rows formatted in one call per batch, for the plain text rows (the
 * default output), where Python's per-event work is the tracer's limit.
 *
 * textrow.RowFormatter is the reference: every byte this writes is what it
 * writes (tests/unit/test_fast_rows.py compares the two on the golden
 * corpus and on random events). What a row is made of, this code is told
 * when a Formatter is made (textrow.c_spec(), read by _rows_spec.c): the
 * event's layout (fields.FIELDS), the row's format, widths and words, the
 * numbers it shares with reader.py. Anything unusual goes back to Python,
 * one record at a time (STOP_SLOW): records shorter than struct event_t,
 * and a TRACE_INFO that Python could not make.
 *
 * Built by scripts/build-rows.sh (and the Debian package) from _rows.c,
 * _rows_spec.c and _rows_text.c; without it, textrow.py's Python path does
 * the same work, slower.
 */
#include "_rows.h"

#include <string.h>

/* make(argument) as UTF-8 bytes (a new reference); NULL with no exception
 * set when Python could not make it (its own path will say what is wrong). */
PyObject *utf8_of(PyObject *make, PyObject *argument)
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

/* The event's stack lines (borrowed), b"" without, or NULL. A stack id
 * names one stack for the whole run (skbtracer.c asks without
 * BPF_F_REUSE_STACKID and nothing deletes): its lines are made once. */
PyObject *stack_lines(Formatter *self, const unsigned char *e)
{
    static PyObject *none;
    int32_t stack_id = (int32_t)host32(e + self->spec.stack_id);
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

static int Formatter_init(Formatter *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"spec", "tail_of", "clock", "stack_text", "all_stacks", NULL};
    PyObject *spec, *tail_of, *clock, *stack_text = Py_None;
    int all_stacks = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|Op", names, &spec, &tail_of, &clock,
                                     &stack_text, &all_stacks))
        return -1;
    if (spec_read(&self->spec, spec) < 0)
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
    spec_clear(&self->spec);
    PyMem_Free(self->out.data);
    Py_TYPE(self)->tp_free((PyObject *)self);
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

/* The story's copies of a batch's events: their bytes and namespaces */
typedef struct {
    PyObject *raws;          /* list of bytes */
    PyObject *netns_seen;    /* set of int */
    uint32_t last_netns;
    int have_netns;
} Kept;

static int keep_event(Kept *kept, const Spec *spec, const unsigned char *e)
{
    PyObject *raw = PyBytes_FromStringAndSize((const char *)e, spec->event_size);
    if (!raw || PyList_Append(kept->raws, raw) < 0) {
        Py_XDECREF(raw);
        return -1;
    }
    Py_DECREF(raw);
    uint32_t netns = host32(e + spec->netns);
    if (kept->have_netns && netns == kept->last_netns)
        return 0;
    PyObject *number = PyLong_FromUnsignedLong(netns);
    if (!number || PySet_Add(kept->netns_seen, number) < 0) {
        Py_XDECREF(number);
        return -1;
    }
    Py_DECREF(number);
    kept->last_netns = netns;
    kept->have_netns = 1;
    return 0;
}

/* Where a walk is and what it made */
typedef struct {
    unsigned long long position;
    Py_ssize_t records, rows;
    int stop;
} Walk;

/* The records of data (view_len bytes; their pages at base, mask = their
 * size - 1) from w->position to producer, as Formatter.ring: 0, or -1 on
 * an error. kept: where the story's copies go, or NULL. */
static int walk(Formatter *self, const unsigned char *data, size_t view_len, size_t base,
                unsigned long long mask, unsigned long long producer, long long max_rows,
                Py_ssize_t max_records, Kept *kept, Walk *w)
{
    const Spec *spec = &self->spec;
    size_t header = (size_t)spec->ringbuf_header;
    w->stop = spec->stop_end;
    while (w->records < max_records && w->position < producer) {
        size_t at = base + (size_t)(w->position & mask);
        if (at + header > view_len) {
            w->stop = spec->stop_slow;
            return 0;
        }
        uint32_t length = __atomic_load_n((const uint32_t *)(data + at), __ATOMIC_ACQUIRE);
        if (length & spec->ringbuf_busy) {
            w->stop = spec->stop_busy; /* reserved, not committed: its commit wakes the reader */
            return 0;
        }
        if (!(length & spec->ringbuf_discard) && max_rows != 0) {
            const unsigned char *e = data + at + header;
            if (length < (size_t)spec->event_size || at + header + length > view_len) {
                w->stop = spec->stop_slow;
                return 0;
            }
            int made = format_row(self, e);
            if (made < 0 || (made == 0 && kept && keep_event(kept, spec, e) < 0))
                return -1;
            if (made > 0) {
                w->stop = spec->stop_slow;
                return 0;
            }
            w->rows++;
        }
        w->position += ((length & ~spec->ringbuf_discard) + header + 7) & ~7ULL;
        w->records++;
        if (max_rows > 0 && w->rows >= max_rows) {
            w->stop = spec->stop_count;
            return 0;
        }
    }
    return 0;
}

static PyObject *Formatter_ring(Formatter *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t base, max_records;
    unsigned long long mask, producer;
    long long max_rows;
    int keep;
    Walk w = {0};
    if (!PyArg_ParseTuple(args, "y*nKKKLnp", &view, &base, &mask, &w.position, &producer,
                          &max_rows, &max_records, &keep))
        return NULL;
    Kept kept = {keep ? PyList_New(0) : Py_None, keep ? PySet_New(NULL) : Py_None, 0, 0};
    if (!keep) {
        Py_INCREF(Py_None);
        Py_INCREF(Py_None);
    }
    int failed = !kept.raws || !kept.netns_seen || read_offset(self) < 0 ||
                 walk(self, view.buf, (size_t)view.len, (size_t)base, mask, producer, max_rows,
                      max_records, keep ? &kept : NULL, &w) < 0;
    PyBuffer_Release(&view);
    PyObject *text = failed ? NULL : take_text(self);
    if (!text) {
        self->out.len = 0;
        Py_XDECREF(kept.raws);
        Py_XDECREF(kept.netns_seen);
        return NULL;
    }
    return Py_BuildValue("KnnNNNi", w.position, w.records, w.rows, text, kept.raws,
                         kept.netns_seen, w.stop);
}

PyDoc_STRVAR(row_doc, "row(raw) -> bytes: one event's row (UTF-8, with its newline), or None "
                      "where Python's path must make it");

static PyObject *Formatter_row(Formatter *self, PyObject *arg)
{
    Py_buffer view;
    if (read_offset(self) < 0 || PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int made = view.len >= self->spec.event_size ? format_row(self, view.buf) : 1;
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
    .tp_doc = PyDoc_STR("Formatter(spec, tail_of, clock, stack_text=None, all_stacks=False): "
                        "text rows of raw events; spec: textrow.c_spec()"),
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
    .m_doc = "skbtracer's text rows in C (see events/textrow.py)",
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
        PyModule_AddIntConstant(m, "ABI", ROWS_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
