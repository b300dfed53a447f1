/* The native HTTP/2 codec: the ``Codec`` interface of ``_codec.py`` over libnghttp2.
 *
 * Theory of operation. One ``NgCodec`` owns one nghttp2 session. nghttp2 calls
 * back while it parses (``feed`` -> nghttp2_session_mem_recv) and while it
 * serializes (``flush`` -> nghttp2_session_mem_send); the callbacks only build
 * event tuples and append them to ``self->events``, which ``feed`` returns.
 * Serialized bytes are appended to one C buffer that ``pending`` turns into a
 * single ``bytes``.
 *
 * Outbound bodies: each stream has a queue of ``bytes`` chunks and, once a body
 * may follow its HEADERS, one data provider (``read_body``) that copies from the
 * queue as flow control allows. An empty, unfinished queue makes the provider
 * return NGHTTP2_ERR_DEFERRED; ``send_data`` resumes it. ``send_data`` and
 * ``feed`` serialize at once so that ``buffered`` is exact afterwards: a stream
 * whose queue is non-empty after that is "blocked", and it gets a DRAINED event
 * when its queue empties. Trailers queued behind a body are sent from the
 * provider with nghttp2_submit_trailer. ``send_response`` and ``send_request``
 * take a whole message (head, body, trailers) and serialize it in one pass: a
 * unary gRPC answer is one call and one mem_send instead of three of each.
 *
 * Inbound flow control is manual (no_auto_window_update): ``consumed`` calls
 * nghttp2_session_consume. Connection errors: nghttp2 either returns a fatal
 * error from mem_recv or queues a GOAWAY itself; both end in H2ConnectionError
 * after the GOAWAY is serialized into the pending bytes.
 *
 * Streams are tracked in a small open-addressing map keyed by stream id (not
 * nghttp2's stream user data, which a client request is not given until its
 * HEADERS leave the queue). A stream record is freed in on_stream_close, or in
 * on_frame_not_send for a request that never opened, or when the codec dies.
 *
 * No Python code runs inside callbacks (only object allocation), and a re-entrant
 * call (say from a finalizer) is refused, so nghttp2 is never re-entered.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>
#include <nghttp2/nghttp2.h>

enum { EV_HEADERS = 1, EV_DATA = 2, EV_RESET = 3, EV_DRAINED = 4, EV_GOAWAY = 5, EV_SETTINGS = 6 };

/* Not in every 1.52 header (the Debian fix for CVE-2024-28182 added it). */
#define ERR_TOO_MANY_CONTINUATIONS (-905)
#define NV_STACK 32

static PyObject *H2ConnectionError;

/* Optional mitigations looked up at import: absent from unpatched libnghttp2. */
static void (*opt_reset_rate_limit)(nghttp2_option *, uint64_t, uint64_t);
static void (*opt_max_continuations)(nghttp2_option *, size_t);

typedef struct stream_s {
    int32_t id;
    PyObject *chunks;     /* list of bytes queued to send, or NULL */
    Py_ssize_t head;      /* index of the first chunk not fully sent */
    Py_ssize_t offset;    /* bytes of chunks[head] already sent */
    Py_ssize_t buffered;  /* bytes queued and not yet serialized */
    PyObject *trailers;   /* header list to send after the body, or NULL */
    unsigned providing : 1; /* a data provider is attached */
    unsigned deferred : 1;  /* ... and returned NGHTTP2_ERR_DEFERRED */
    unsigned end : 1;       /* the body ends after the queue */
    unsigned blocked : 1;   /* the queue was left non-empty: report DRAINED */
    unsigned known : 1;     /* the driver knows this stream (RESETs are reported) */
    unsigned local_reset : 1;
} stream_t;

typedef struct {
    int32_t key;
    stream_t *val;
} slot_t;

typedef struct {
    PyObject_HEAD
    nghttp2_session *session;
    PyObject *events;   /* list, or NULL when empty */
    PyObject *hdrs;     /* header block being received */
    int32_t hdrs_sid;
    size_t hdrs_size;   /* RFC 9113 §6.5.2 size of hdrs so far */
    PyObject *data;     /* DATA payload of the frame being received */
    int32_t data_sid;
    char *out;
    size_t out_len, out_cap;
    slot_t *slots;
    size_t cap, count;
    int client;
    int busy;
    int cb_error;            /* a Python exception was set in a callback */
    int goaway_requested;    /* GOAWAYs asked for by goaway() not yet sent */
    int failed;              /* connection error raised; its code: */
    uint32_t error_code;
    uint32_t max_concurrent_streams, initial_window_size, max_frame_size, max_header_list_size;
    char errmsg[160];
} Codec;

/* ---- stream map ------------------------------------------------------- */

static size_t slot_of(Codec *self, int32_t key) { return ((uint32_t)key >> 1) & (self->cap - 1); }

static stream_t *map_get(Codec *self, int32_t key) {
    if (self->cap == 0 || key <= 0) return NULL;
    for (size_t i = slot_of(self, key);; i = (i + 1) & (self->cap - 1)) {
        if (self->slots[i].key == key) return self->slots[i].val;
        if (self->slots[i].key == 0) return NULL;
    }
}

static int map_put(Codec *self, stream_t *st) {
    if ((self->count + 1) * 2 > self->cap) {
        size_t ncap = self->cap ? self->cap * 2 : 16;
        slot_t *old = self->slots;
        size_t ocap = self->cap;
        slot_t *slots = PyMem_Calloc(ncap, sizeof(slot_t));
        if (slots == NULL) return -1;
        self->slots = slots;
        self->cap = ncap;
        for (size_t i = 0; i < ocap; i++) {
            if (old[i].key == 0) continue;
            size_t j = slot_of(self, old[i].key);
            while (slots[j].key != 0) j = (j + 1) & (ncap - 1);
            slots[j] = old[i];
        }
        PyMem_Free(old);
    }
    size_t i = slot_of(self, st->id);
    while (self->slots[i].key != 0) i = (i + 1) & (self->cap - 1);
    self->slots[i].key = st->id;
    self->slots[i].val = st;
    self->count++;
    return 0;
}

static void map_del(Codec *self, int32_t key) {
    size_t mask = self->cap - 1, i = slot_of(self, key);
    while (self->slots[i].key != key) {
        if (self->slots[i].key == 0) return;
        i = (i + 1) & mask;
    }
    /* Backward-shift deletion keeps probe chains intact without tombstones. */
    for (size_t j = (i + 1) & mask; self->slots[j].key != 0; j = (j + 1) & mask) {
        size_t home = slot_of(self, self->slots[j].key);
        if (((j - home) & mask) >= ((j - i) & mask)) {
            self->slots[i] = self->slots[j];
            i = j;
        }
    }
    self->slots[i].key = 0;
    self->slots[i].val = NULL;
    self->count--;
}

static stream_t *stream_new(Codec *self, int32_t id) {
    stream_t *st = PyMem_Calloc(1, sizeof(stream_t));
    if (st == NULL) return NULL;
    st->id = id;
    if (map_put(self, st) < 0) {
        PyMem_Free(st);
        return NULL;
    }
    return st;
}

static void stream_clear_queue(stream_t *st) {
    Py_CLEAR(st->chunks);
    Py_CLEAR(st->trailers);
    st->head = st->offset = st->buffered = 0;
}

static void stream_free(Codec *self, stream_t *st) {
    map_del(self, st->id);
    stream_clear_queue(st);
    PyMem_Free(st);
}

/* ---- events and output ------------------------------------------------ */

static PyObject *SETTINGS_EVENT; /* (SETTINGS,): immutable, shared */

/* (kind, sid, obj, flag); steals ``obj``. Cheaper than Py_BuildValue on the hot path. */
static PyObject *ev4(long kind, int32_t sid, PyObject *obj, int flag) {
    if (obj == NULL) return NULL;
    PyObject *t = PyTuple_New(4), *k = PyLong_FromLong(kind), *i = PyLong_FromLong(sid);
    if (t == NULL || k == NULL || i == NULL) {
        Py_XDECREF(t);
        Py_XDECREF(k);
        Py_XDECREF(i);
        Py_DECREF(obj);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, k);
    PyTuple_SET_ITEM(t, 1, i);
    PyTuple_SET_ITEM(t, 2, obj);
    PyTuple_SET_ITEM(t, 3, Py_NewRef(flag ? Py_True : Py_False));
    return t;
}

/* (kind, sid, error_code) */
static PyObject *ev3(long kind, int32_t sid, uint32_t code) {
    return Py_BuildValue("(liI)", kind, sid, code);
}

/* Append ``ev`` (a new reference, may be NULL on failure) to the events. */
static int emit(Codec *self, PyObject *ev) {
    if (ev == NULL) goto fail;
    if (self->events == NULL && (self->events = PyList_New(0)) == NULL) {
        Py_DECREF(ev);
        goto fail;
    }
    int rv = PyList_Append(self->events, ev);
    Py_DECREF(ev);
    if (rv == 0) return 0;
fail:
    self->cb_error = 1;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int out_append(Codec *self, const uint8_t *p, size_t n) {
    if (self->out_len + n > self->out_cap) {
        size_t cap = self->out_cap ? self->out_cap : 4096;
        while (cap < self->out_len + n) cap *= 2;
        char *out = PyMem_Realloc(self->out, cap);
        if (out == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->out = out;
        self->out_cap = cap;
    }
    memcpy(self->out + self->out_len, p, n);
    self->out_len += n;
    return 0;
}

/* Serialize everything nghttp2 has queued into self->out. */
static int flush(Codec *self) {
    for (;;) {
        const uint8_t *p;
        ssize_t n = nghttp2_session_mem_send(self->session, &p);
        if (self->cb_error) return -1;
        if (n < 0) {
            PyErr_Format(PyExc_RuntimeError, "nghttp2: %s", nghttp2_strerror((int)n));
            return -1;
        }
        if (n == 0) return 0;
        if (out_append(self, p, (size_t)n) < 0) return -1;
    }
}

static PyObject *take_events(Codec *self) {
    PyObject *ev = self->events;
    self->events = NULL;
    return ev ? ev : PyList_New(0);
}

/* ---- header lists ----------------------------------------------------- */

typedef struct {
    nghttp2_nv stack[NV_STACK];
    nghttp2_nv *nva;
    size_t n;
    PyObject *seq;  /* PySequence_Fast of the headers */
    char *lower;    /* lowercased copies of names that had capitals */
} nvbuf_t;

static void nv_release(nvbuf_t *nb) {
    if (nb->nva != nb->stack) PyMem_Free(nb->nva);
    PyMem_Free(nb->lower);
    Py_XDECREF(nb->seq);
}

/* Fill ``nb`` from a list of (name, value) bytes pairs. Names with capitals are
 * lowercased (RFC 9113 §8.2.1); nghttp2 copies the array at submission. */
static int nv_build(nvbuf_t *nb, PyObject *headers) {
    nb->nva = nb->stack;
    nb->lower = NULL;
    nb->seq = PySequence_Fast(headers, "headers must be a list of (name, value) bytes pairs");
    if (nb->seq == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(nb->seq);
    PyObject **items = PySequence_Fast_ITEMS(nb->seq);
    nb->n = (size_t)n;
    if (n > NV_STACK && (nb->nva = PyMem_Malloc((size_t)n * sizeof(nghttp2_nv))) == NULL) {
        nb->nva = nb->stack;
        PyErr_NoMemory();
        goto fail;
    }
    size_t lower_need = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = items[i];
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(t, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(t, 1))) {
            PyErr_SetString(PyExc_TypeError, "headers must be a list of (name, value) bytes pairs");
            goto fail;
        }
        PyObject *name = PyTuple_GET_ITEM(t, 0), *value = PyTuple_GET_ITEM(t, 1);
        nghttp2_nv *nv = &nb->nva[i];
        nv->name = (uint8_t *)PyBytes_AS_STRING(name);
        nv->namelen = (size_t)PyBytes_GET_SIZE(name);
        nv->value = (uint8_t *)PyBytes_AS_STRING(value);
        nv->valuelen = (size_t)PyBytes_GET_SIZE(value);
        nv->flags = NGHTTP2_NV_FLAG_NONE;
        for (size_t k = 0; k < nv->namelen; k++) {
            if (nv->name[k] >= 'A' && nv->name[k] <= 'Z') {
                lower_need += nv->namelen;
                break;
            }
        }
    }
    if (lower_need) {
        if ((nb->lower = PyMem_Malloc(lower_need)) == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        char *p = nb->lower;
        for (size_t i = 0; i < nb->n; i++) {
            nghttp2_nv *nv = &nb->nva[i];
            size_t k;
            for (k = 0; k < nv->namelen && !(nv->name[k] >= 'A' && nv->name[k] <= 'Z'); k++) {
            }
            if (k == nv->namelen) continue;
            for (k = 0; k < nv->namelen; k++) {
                uint8_t c = nv->name[k];
                p[k] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
            }
            nv->name = (uint8_t *)p;
            p += nv->namelen;
        }
    }
    return 0;
fail:
    nv_release(nb);
    nb->seq = NULL;
    nb->lower = NULL;
    nb->nva = nb->stack;
    return -1;
}

/* ---- nghttp2 callbacks ------------------------------------------------ */

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *ud) {
    Codec *self = ud;
    (void)session;
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    Py_XSETREF(self->hdrs, PyList_New(0));
    if (self->hdrs == NULL) goto fail;
    self->hdrs_sid = frame->hd.stream_id;
    self->hdrs_size = 0;
    if (!self->client && frame->headers.cat == NGHTTP2_HCAT_REQUEST && map_get(self, frame->hd.stream_id) == NULL &&
        stream_new(self, frame->hd.stream_id) == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    return 0;
fail:
    self->cb_error = 1;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

/* bytes objects for strings of HPACK's static table (RFC 7541 Appendix A), keyed by the
 * address nghttp2 keeps them at: a hit saves an allocation per common name or value. */
#define STATIC_CACHE 128
static struct {
    const uint8_t *base;
    PyObject *bytes;
} static_cache[STATIC_CACHE];

/* Strings of the HPACK dynamic tables: a connection's repeated fields (content-type,
 * te, grpc-status, the authority, a gRPC method's path) come back as the same rcbuf while
 * the entry lives, so the bytes object made for it is kept, keyed by the rcbuf's buffer
 * address. The content is compared on every hit: an address freed and reused for another
 * string only misses. */
#define DYN_CACHE 256
#define DYN_MAX_LEN 256
static struct {
    const uint8_t *base;
    PyObject *bytes;
} dyn_cache[DYN_CACHE];

/* The (name, value) tuples made from two kept strings, keyed by the two objects: a
 * repeated field costs no tuple either. A cached tuple holds its items, so an identity
 * match cannot be a stale address. */
#define PAIR_CACHE 256
static PyObject *pair_cache[PAIR_CACHE];

/* ``*kept`` tells whether a cache holds the returned object (a pair of them may be cached). */
static PyObject *rcbuf_bytes(nghttp2_rcbuf *rc, int *kept) {
    nghttp2_vec v = nghttp2_rcbuf_get_buf(rc);
    *kept = 0;
    if (!nghttp2_rcbuf_is_static(rc)) {
        if (v.len == 0 || v.len > DYN_MAX_LEN) return PyBytes_FromStringAndSize((const char *)v.base, (Py_ssize_t)v.len);
        size_t i = ((uintptr_t)v.base >> 4) % DYN_CACHE;
        PyObject *hit = dyn_cache[i].bytes;
        if (dyn_cache[i].base == v.base && PyBytes_GET_SIZE(hit) == (Py_ssize_t)v.len &&
            memcmp(PyBytes_AS_STRING(hit), v.base, v.len) == 0) {
            *kept = 1;
            return Py_NewRef(hit);
        }
        PyObject *b = PyBytes_FromStringAndSize((const char *)v.base, (Py_ssize_t)v.len);
        if (b != NULL) {
            Py_XSETREF(dyn_cache[i].bytes, Py_NewRef(b));
            dyn_cache[i].base = v.base;
            *kept = 1;
        }
        return b;
    }
    size_t i = ((uintptr_t)v.base >> 3) % STATIC_CACHE;
    if (static_cache[i].base == v.base && PyBytes_GET_SIZE(static_cache[i].bytes) == (Py_ssize_t)v.len) {
        *kept = 1;
        return Py_NewRef(static_cache[i].bytes);
    }
    PyObject *b = PyBytes_FromStringAndSize((const char *)v.base, (Py_ssize_t)v.len);
    if (b != NULL) {
        Py_XSETREF(static_cache[i].bytes, Py_NewRef(b));
        static_cache[i].base = v.base;
        *kept = 1;
    }
    return b;
}

/* (name, value), both new references, stolen. */
static PyObject *header_pair(PyObject *name, PyObject *value, int kept) {
    PyObject **slot = NULL;
    if (kept) {
        slot = &pair_cache[(((uintptr_t)name >> 4) * 31u + ((uintptr_t)value >> 4)) % PAIR_CACHE];
        PyObject *c = *slot;
        if (c != NULL && PyTuple_GET_ITEM(c, 0) == name && PyTuple_GET_ITEM(c, 1) == value) {
            Py_DECREF(name);
            Py_DECREF(value);
            return Py_NewRef(c);
        }
    }
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(name);
        Py_DECREF(value);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, name);
    PyTuple_SET_ITEM(pair, 1, value);
    if (slot != NULL) Py_XSETREF(*slot, Py_NewRef(pair));
    return pair;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, nghttp2_rcbuf *name_rc,
                     nghttp2_rcbuf *value_rc, uint8_t flags, void *ud) {
    Codec *self = ud;
    (void)flags;
    if (self->hdrs == NULL || self->hdrs_sid != frame->hd.stream_id) return 0;
    size_t namelen = nghttp2_rcbuf_get_buf(name_rc).len, valuelen = nghttp2_rcbuf_get_buf(value_rc).len;
    self->hdrs_size += namelen + valuelen + 32;
    if (self->hdrs_size > self->max_header_list_size) {
        /* Larger than our SETTINGS_MAX_HEADER_LIST_SIZE: refuse the stream. */
        Py_CLEAR(self->hdrs);
        stream_t *st = map_get(self, frame->hd.stream_id);
        if (st != NULL && !st->known) st->local_reset = 1;
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_ENHANCE_YOUR_CALM);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    int kept_name, kept_value;
    PyObject *name = rcbuf_bytes(name_rc, &kept_name), *value = rcbuf_bytes(value_rc, &kept_value);
    if (name == NULL || value == NULL) {
        Py_XDECREF(name);
        Py_XDECREF(value);
        goto fail;
    }
    PyObject *pair = header_pair(name, value, kept_name && kept_value);
    if (pair == NULL) goto fail;
    int rv = PyList_Append(self->hdrs, pair);
    Py_DECREF(pair);
    if (rv == 0) return 0;
fail:
    self->cb_error = 1;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                         void *ud) {
    Codec *self = ud;
    (void)session;
    (void)flags;
    if (self->data != NULL && self->data_sid == sid) {
        PyObject *more = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
        if (more == NULL) goto fail;
        PyBytes_ConcatAndDel(&self->data, more);
        if (self->data == NULL) goto fail;
        return 0;
    }
    if (self->data != NULL && emit(self, ev4(EV_DATA, self->data_sid, Py_NewRef(self->data), 0)) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    Py_XSETREF(self->data, PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len));
    if (self->data == NULL) goto fail;
    self->data_sid = sid;
    return 0;
fail:
    self->cb_error = 1;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *ud) {
    Codec *self = ud;
    int32_t sid = frame->hd.stream_id;
    PyObject *end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) ? Py_True : Py_False;
    (void)session;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
        if (self->hdrs == NULL || self->hdrs_sid != sid) return 0;
        stream_t *st = map_get(self, sid);
        if (st != NULL) st->known = 1;
        PyObject *hdrs = self->hdrs;
        self->hdrs = NULL;
        PyObject *ev = ev4(EV_HEADERS, sid, hdrs, end == Py_True);
        return emit(self, ev);
    }
    case NGHTTP2_DATA: {
        PyObject *data = self->data;
        if (data != NULL && self->data_sid == sid) {
            self->data = NULL;
            return emit(self, ev4(EV_DATA, sid, data, end == Py_True));
        }
        if (end == Py_True) return emit(self, ev4(EV_DATA, sid, PyBytes_FromStringAndSize(NULL, 0), 1));
        return 0;
    }
    case NGHTTP2_RST_STREAM:
        return emit(self, ev3(EV_RESET, sid, frame->rst_stream.error_code));
    case NGHTTP2_GOAWAY:
        return emit(self, ev3(EV_GOAWAY, frame->goaway.last_stream_id, frame->goaway.error_code));
    case NGHTTP2_SETTINGS:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK) return 0;
        return emit(self, Py_NewRef(SETTINGS_EVENT));
    default:
        return 0;
    }
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *ud) {
    Codec *self = ud;
    (void)session;
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        /* A stream error found by nghttp2 (or our header-size check): tell the driver. */
        stream_t *st = map_get(self, frame->hd.stream_id);
        if (st != NULL && st->known && !st->local_reset)
            return emit(self, ev3(EV_RESET, frame->hd.stream_id, frame->rst_stream.error_code));
    } else if (frame->hd.type == NGHTTP2_GOAWAY) {
        if (self->goaway_requested > 0) {
            self->goaway_requested--;
        } else if (frame->goaway.error_code != NGHTTP2_NO_ERROR && !self->failed) {
            self->failed = 1;
            self->error_code = frame->goaway.error_code;
            /* nghttp2 puts its reason in the debug data: the clearest message there is. */
            size_t n = frame->goaway.opaque_data_len;
            if (n > 0) {
                if (n >= sizeof(self->errmsg)) n = sizeof(self->errmsg) - 1;
                memcpy(self->errmsg, frame->goaway.opaque_data, n);
                self->errmsg[n] = '\0';
            }
        }
    }
    return 0;
}

static int on_frame_not_send(nghttp2_session *session, const nghttp2_frame *frame, int lib_error_code, void *ud) {
    Codec *self = ud;
    (void)session;
    (void)lib_error_code;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST || !self->client) return 0;
    /* A request that never left (GOAWAY received, or reset while queued). */
    stream_t *st = map_get(self, frame->hd.stream_id);
    if (st == NULL) return 0;
    int notify = !st->local_reset;
    stream_free(self, st);
    if (notify) return emit(self, ev3(EV_RESET, frame->hd.stream_id, NGHTTP2_REFUSED_STREAM));
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t sid, uint32_t error_code, void *ud) {
    Codec *self = ud;
    (void)session;
    (void)error_code;
    stream_t *st = map_get(self, sid);
    if (st != NULL) stream_free(self, st);
    if (self->hdrs != NULL && self->hdrs_sid == sid) Py_CLEAR(self->hdrs);
    return 0;
}

static int on_error(nghttp2_session *session, int lib_error_code, const char *msg, size_t len, void *ud) {
    Codec *self = ud;
    (void)session;
    (void)lib_error_code;
    if (len >= sizeof(self->errmsg)) len = sizeof(self->errmsg) - 1;
    memcpy(self->errmsg, msg, len);
    self->errmsg[len] = '\0';
    return 0;
}

static int submit_trailers(Codec *self, int32_t sid, PyObject *headers) {
    nvbuf_t nb;
    if (nv_build(&nb, headers) < 0) {
        self->cb_error = 1;
        return -1;
    }
    int rv = nghttp2_submit_trailer(self->session, sid, nb.nva, nb.n);
    nv_release(&nb);
    return rv;
}

static ssize_t read_body(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length, uint32_t *flags,
                         nghttp2_data_source *source, void *ud) {
    Codec *self = ud;
    stream_t *st = source->ptr;
    size_t n = 0;
    (void)session;
    if (st->chunks != NULL) {
        Py_ssize_t count = PyList_GET_SIZE(st->chunks);
        while (n < length && st->head < count) {
            PyObject *b = PyList_GET_ITEM(st->chunks, st->head);
            size_t avail = (size_t)(PyBytes_GET_SIZE(b) - st->offset);
            size_t take = avail < length - n ? avail : length - n;
            memcpy(buf + n, PyBytes_AS_STRING(b) + st->offset, take);
            n += take;
            st->offset += (Py_ssize_t)take;
            if (take == avail) {
                st->head++;
                st->offset = 0;
            }
        }
        if (st->head == count) {
            Py_CLEAR(st->chunks);
            st->head = 0;
        } else if (st->head >= 64) {
            if (PyList_SetSlice(st->chunks, 0, st->head, NULL) < 0) {
                self->cb_error = 1;
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            }
            st->head = 0;
        }
    }
    st->buffered -= (Py_ssize_t)n;
    if (st->buffered > 0) return (ssize_t)n;
    if (st->end) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        st->providing = 0;
        if (st->trailers != NULL) {
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            PyObject *trailers = st->trailers;
            st->trailers = NULL;
            int rv = submit_trailers(self, sid, trailers);
            Py_DECREF(trailers);
            if (rv != 0) {
                if (!self->cb_error) {
                    PyErr_Format(PyExc_RuntimeError, "nghttp2: %s", nghttp2_strerror(rv));
                    self->cb_error = 1;
                }
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            }
        }
    } else if (n == 0) {
        st->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (st->blocked) {
        st->blocked = 0;
        if (emit(self, Py_BuildValue("(li)", (long)EV_DRAINED, sid)) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return (ssize_t)n;
}

/* ---- the type ---------------------------------------------------------- */

static int enter(Codec *self) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "NgCodec re-entered");
        return -1;
    }
    if (self->session == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "NgCodec not initialized");
        return -1;
    }
    self->busy = 1;
    return 0;
}

static PyObject *leave(Codec *self, PyObject *result) {
    self->busy = 0;
    if (self->cb_error) {
        /* The exception a callback set is the one to raise. */
        self->cb_error = 0;
        Py_XDECREF(result);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "nghttp2 callback failed");
        return NULL;
    }
    return result;
}

static PyObject *raise_conn_error(Codec *self) {
    PyObject *exc;
    if (self->errmsg[0])
        exc = PyObject_CallFunction(H2ConnectionError, "IN", self->error_code,
                                    PyUnicode_DecodeUTF8(self->errmsg, (Py_ssize_t)strlen(self->errmsg), "replace"));
    else
        exc = PyObject_CallFunction(H2ConnectionError, "IN", self->error_code,
                                    PyUnicode_FromFormat("HTTP/2 connection error %s from the peer's data",
                                                         nghttp2_http2_strerror(self->error_code)));
    if (exc != NULL) {
        PyErr_SetObject(H2ConnectionError, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static void Codec_dealloc(Codec *self) {
    if (self->session != NULL) nghttp2_session_del(self->session);  /* calls no callbacks */
    for (size_t i = 0; i < self->cap; i++) {
        if (self->slots[i].key != 0) {
            stream_clear_queue(self->slots[i].val);
            PyMem_Free(self->slots[i].val);
        }
    }
    PyMem_Free(self->slots);
    PyMem_Free(self->out);
    Py_XDECREF(self->events);
    Py_XDECREF(self->hdrs);
    Py_XDECREF(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Codec_init(Codec *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"client_side",         "max_concurrent_streams", "initial_window_size",
                             "max_frame_size",      "max_header_list_size",   NULL};
    int client;
    unsigned long mcs = 100, iws = 1UL << 20, mfs = 16384, mhls = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "p|$kkkk:NgCodec", kwlist, &client, &mcs, &iws, &mfs, &mhls))
        return -1;
    if (self->session != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "NgCodec is already initialized");
        return -1;
    }
    if (iws > 0x7fffffffUL || mfs < 16384 || mfs > 0xffffffUL || mcs > 0xffffffffUL || mhls > 0xffffffffUL) {
        PyErr_SetString(PyExc_ValueError,
                        "initial_window_size must be <= 2**31-1 and max_frame_size within 2**14..2**24-1");
        return -1;
    }
    self->client = client;
    self->max_concurrent_streams = (uint32_t)mcs;
    self->initial_window_size = (uint32_t)iws;
    self->max_frame_size = (uint32_t)mfs;
    self->max_header_list_size = (uint32_t)mhls;

    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cbs) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cbs);
        PyErr_NoMemory();
        return -1;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback2(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_error_callback2(cbs, on_error);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    if (opt_reset_rate_limit != NULL) opt_reset_rate_limit(opt, 1000, 33);
    if (opt_max_continuations != NULL) opt_max_continuations(opt, 8);
    int rv = client ? nghttp2_session_client_new2(&self->session, cbs, self, opt)
                    : nghttp2_session_server_new2(&self->session, cbs, self, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0) {
        self->session = NULL;
        PyErr_Format(PyExc_RuntimeError, "nghttp2: %s", nghttp2_strerror(rv));
        return -1;
    }
    return 0;
}

static PyObject *Codec_initiate(Codec *self, PyObject *unused) {
    (void)unused;
    if (enter(self) < 0) return NULL;
    nghttp2_settings_entry iv[6] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, self->max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, self->initial_window_size},
        {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, self->max_frame_size},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, self->max_header_list_size},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    int rv = nghttp2_submit_settings(self->session, NGHTTP2_FLAG_NONE, iv, self->client ? 5 : 4);
    /* The connection window is room for every stream's window at once, so a stream whose
       consumer paused (holding its own window) never stalls the others. */
    uint64_t conn_window = (uint64_t)self->initial_window_size * (self->max_concurrent_streams ? self->max_concurrent_streams : 1);
    if (conn_window > NGHTTP2_MAX_WINDOW_SIZE) conn_window = NGHTTP2_MAX_WINDOW_SIZE;
    if (rv == 0 && conn_window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE)
        rv = nghttp2_session_set_local_window_size(self->session, NGHTTP2_FLAG_NONE, 0, (int32_t)conn_window);
    if (rv != 0) {
        self->busy = 0;
        return PyErr_Format(PyExc_RuntimeError, "nghttp2: %s", nghttp2_strerror(rv));
    }
    return leave(self, Py_NewRef(Py_None));
}

static PyObject *Codec_feed(Codec *self, PyObject *arg) {
    Py_buffer view;
    if (self->failed) return raise_conn_error(self);
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    if (enter(self) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    self->errmsg[0] = '\0';  /* a message left by an earlier stream error is not this feed's */
    ssize_t rv = nghttp2_session_mem_recv(self->session, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (self->cb_error) {
        /* Out of memory in a callback: nghttp2 treats that as fatal, so is the connection. */
        self->failed = 1;
        self->error_code = NGHTTP2_INTERNAL_ERROR;
        return leave(self, NULL);
    }
    if (self->data != NULL) {
        /* The rest of this DATA frame comes in a later feed: hand over what we have. */
        PyObject *data = self->data;
        self->data = NULL;
        emit(self, ev4(EV_DATA, self->data_sid, data, 0));
    }
    if (rv < 0) {
        uint32_t code = NGHTTP2_PROTOCOL_ERROR;
        if (rv == NGHTTP2_ERR_FLOODED || rv == ERR_TOO_MANY_CONTINUATIONS) code = NGHTTP2_ENHANCE_YOUR_CALM;
        else if (rv == NGHTTP2_ERR_NOMEM) code = NGHTTP2_INTERNAL_ERROR;
        if (!self->errmsg[0]) snprintf(self->errmsg, sizeof(self->errmsg), "%s", nghttp2_strerror((int)rv));
        self->goaway_requested++;  /* this GOAWAY is ours, not a detected error */
        nghttp2_session_terminate_session(self->session, code);
        self->failed = 1;
        self->error_code = code;
    }
    if (flush(self) < 0) {
        if (!self->failed) return leave(self, NULL);
        /* The GOAWAY could not be serialized: the connection error is still the news. */
        PyErr_Clear();
        self->cb_error = 0;
    }
    if (self->failed) {
        Py_CLEAR(self->events);
        self->busy = 0;
        return raise_conn_error(self);
    }
    return leave(self, take_events(self));
}

static PyObject *Codec_pending(Codec *self, PyObject *unused) {
    (void)unused;
    if (enter(self) < 0) return NULL;
    if (flush(self) < 0) return leave(self, NULL);
    PyObject *out = PyBytes_FromStringAndSize(self->out, (Py_ssize_t)self->out_len);
    if (out != NULL) {
        self->out_len = 0;
        if (self->out_cap > (1u << 20)) {
            /* Do not hold a large body's worth of memory per idle connection. */
            PyMem_Free(self->out);
            self->out = NULL;
            self->out_cap = 0;
        }
    }
    return leave(self, out);
}

static int fail_rv(Codec *self, int rv) {
    self->busy = 0;
    if (rv == NGHTTP2_ERR_START_STREAM_NOT_ALLOWED || rv == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) {
        PyObject *exc = PyObject_CallFunction(H2ConnectionError, "Is", (unsigned)NGHTTP2_REFUSED_STREAM,
                                              "the connection cannot open new streams (GOAWAY)");
        if (exc != NULL) {
            PyErr_SetObject(H2ConnectionError, exc);
            Py_DECREF(exc);
        }
    } else {
        PyErr_Format(PyExc_RuntimeError, "nghttp2: %s", nghttp2_strerror(rv));
    }
    return -1;
}

static PyObject *Codec_request(Codec *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "request() takes 2 arguments");
    int end = PyObject_IsTrue(args[1]);
    if (end < 0) return NULL;
    if (!self->client) return PyErr_Format(PyExc_RuntimeError, "request() on a server codec");
    nvbuf_t nb;
    if (nv_build(&nb, args[0]) < 0) return NULL;
    if (enter(self) < 0) {
        nv_release(&nb);
        return NULL;
    }
    int32_t next = (int32_t)nghttp2_session_get_next_stream_id(self->session);
    stream_t *st = next > 0 ? stream_new(self, next) : NULL;
    if (st == NULL) {
        nv_release(&nb);
        self->busy = 0;
        if (next <= 0) {
            fail_rv(self, NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE);
            return NULL;
        }
        return PyErr_NoMemory();
    }
    int32_t sid;
    if (end) {
        sid = nghttp2_submit_request(self->session, NULL, nb.nva, nb.n, NULL, st);
    } else {
        nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = read_body};
        st->providing = 1;
        sid = nghttp2_submit_request(self->session, NULL, nb.nva, nb.n, &prd, st);
    }
    nv_release(&nb);
    if (sid < 0) {
        stream_free(self, st);
        fail_rv(self, sid);
        return NULL;
    }
    st->known = 1;
    return leave(self, PyLong_FromLong(sid));
}

static int parse_sid(PyObject *o, int32_t *sid) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v <= 0 || v > 0x7fffffffL) {
        PyErr_Format(PyExc_ValueError, "invalid stream id %ld", v);
        return -1;
    }
    *sid = (int32_t)v;
    return 0;
}

static PyObject *Codec_send_headers(Codec *self, PyObject *const *args, Py_ssize_t nargs) {
    int32_t sid;
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "send_headers() takes 3 arguments");
    if (parse_sid(args[0], &sid) < 0) return NULL;
    int end = PyObject_IsTrue(args[2]);
    if (end < 0) return NULL;
    nvbuf_t nb;
    if (nv_build(&nb, args[1]) < 0) return NULL;
    if (enter(self) < 0) {
        nv_release(&nb);
        return NULL;
    }
    stream_t *st = map_get(self, sid);
    int rv = 0;
    if (st == NULL) {
        /* Closed (reset by the peer, say): nothing to send it on. */
    } else if (st->providing) {
        if (!end) {
            nv_release(&nb);
            self->busy = 0;
            return PyErr_Format(PyExc_ValueError, "stream %d: headers after the body must end the stream", sid);
        }
        /* Trailers: sent by read_body once the queued body is out. */
        PyObject *copy = PyList_New((Py_ssize_t)nb.n);
        if (copy == NULL) {
            nv_release(&nb);
            return leave(self, NULL);
        }
        for (size_t i = 0; i < nb.n; i++) {
            PyObject *t = PySequence_Fast_GET_ITEM(nb.seq, i);
            PyList_SET_ITEM(copy, (Py_ssize_t)i, Py_NewRef(t));
        }
        Py_XSETREF(st->trailers, copy);
        st->end = 1;
        if (st->deferred) {
            st->deferred = 0;
            rv = nghttp2_session_resume_data(self->session, sid);
        }
    } else if (end) {
        rv = nghttp2_submit_headers(self->session, NGHTTP2_FLAG_END_STREAM, sid, NULL, nb.nva, nb.n, NULL);
    } else if (!self->client && nb.n > 0 && nb.nva[0].namelen == 7 && memcmp(nb.nva[0].name, ":status", 7) == 0 &&
               nb.nva[0].valuelen == 3 && nb.nva[0].value[0] == '1') {
        rv = nghttp2_submit_headers(self->session, NGHTTP2_FLAG_NONE, sid, NULL, nb.nva, nb.n, NULL);  /* 1xx */
    } else if (!self->client) {
        nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = read_body};
        st->providing = 1;
        rv = nghttp2_submit_response(self->session, sid, nb.nva, nb.n, &prd);
        if (rv != 0) st->providing = 0;
    } else {
        nv_release(&nb);
        self->busy = 0;
        return PyErr_Format(PyExc_ValueError, "stream %d: a client sends non-final headers only with request()", sid);
    }
    nv_release(&nb);
    if (rv != 0 && rv != NGHTTP2_ERR_INVALID_ARGUMENT) {
        fail_rv(self, rv);
        return NULL;
    }
    return leave(self, Py_NewRef(Py_None));
}

static PyObject *Codec_send_data(Codec *self, PyObject *const *args, Py_ssize_t nargs) {
    int32_t sid;
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "send_data() takes 3 arguments");
    if (parse_sid(args[0], &sid) < 0) return NULL;
    int end = PyObject_IsTrue(args[2]);
    if (end < 0) return NULL;
    PyObject *data = args[1];
    if (PyBytes_CheckExact(data)) {
        Py_INCREF(data);
    } else if ((data = PyBytes_FromObject(data)) == NULL) {  /* copies bytearray/memoryview */
        return NULL;
    }
    if (enter(self) < 0) {
        Py_DECREF(data);
        return NULL;
    }
    stream_t *st = map_get(self, sid);
    if (st == NULL || st->end || (!st->providing && st->local_reset)) {
        /* Closed, reset or already ended (as the reference codec, drop it): the driver
           has had, or will get, the RESET. */
        Py_DECREF(data);
        self->busy = 0;
        Py_RETURN_NONE;
    }
    if (!st->providing) {
        Py_DECREF(data);
        self->busy = 0;
        return PyErr_Format(PyExc_ValueError, "stream %d: a body needs non-final headers first", sid);
    }
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    if (len > 0) {
        if (st->chunks == NULL && (st->chunks = PyList_New(0)) == NULL) {
            Py_DECREF(data);
            return leave(self, NULL);
        }
        if (PyList_Append(st->chunks, data) < 0) {
            Py_DECREF(data);
            return leave(self, NULL);
        }
        st->buffered += len;
    }
    Py_DECREF(data);
    if (end) st->end = 1;
    if (st->deferred && (len > 0 || end)) {
        st->deferred = 0;
        nghttp2_session_resume_data(self->session, sid);
    }
    if (flush(self) < 0) return leave(self, NULL);
    /* The stream record may be gone if the flush closed the stream. */
    st = map_get(self, sid);
    if (st != NULL && st->buffered > 0) st->blocked = 1;
    return leave(self, Py_NewRef(Py_None));
}

/* ---- whole messages in one call ------------------------------------------ */

/* ``data`` as a new bytes reference, or NULL with *none set for None or b"". */
static PyObject *body_arg(PyObject *data, int *none) {
    *none = 0;
    if (data == Py_None) {
        *none = 1;
        return NULL;
    }
    if (PyBytes_CheckExact(data)) {
        if (PyBytes_GET_SIZE(data) == 0) {
            *none = 1;
            return NULL;
        }
        return Py_NewRef(data);
    }
    PyObject *b = PyBytes_FromObject(data);  /* copies bytearray/memoryview */
    if (b != NULL && PyBytes_GET_SIZE(b) == 0) {
        Py_DECREF(b);
        *none = 1;
        return NULL;
    }
    return b;
}

/* A private list of the trailer pairs (the caller's list may change after the call), or
 * NULL with *none set for None or an empty list. Checked now, not when the body ends. */
static PyObject *trailers_arg(PyObject *trailers, int *none) {
    *none = 0;
    if (trailers == Py_None) {
        *none = 1;
        return NULL;
    }
    PyObject *copy = PySequence_List(trailers);
    if (copy == NULL) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(copy);
    if (n == 0) {
        Py_DECREF(copy);
        *none = 1;
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(copy, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(t, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(t, 1))) {
            Py_DECREF(copy);
            PyErr_SetString(PyExc_TypeError, "trailers must be a list of (name, value) bytes pairs");
            return NULL;
        }
    }
    return copy;
}

/* Give ``st`` a whole body: ``data`` and ``trailers`` (both stolen, either may be NULL) end
 * the stream. The caller attaches the data provider. */
static int body_whole(stream_t *st, PyObject *data, PyObject *trailers) {
    if (data != NULL) {
        PyObject *chunks = PyList_New(1);
        if (chunks == NULL) {
            Py_DECREF(data);
            Py_XDECREF(trailers);
            return -1;
        }
        st->buffered = PyBytes_GET_SIZE(data);
        PyList_SET_ITEM(chunks, 0, data);
        Py_XSETREF(st->chunks, chunks);
        st->head = st->offset = 0;
    }
    Py_XSETREF(st->trailers, trailers);
    st->end = 1;
    st->providing = 1;
    return 0;
}

/* After the single serialization of a whole message: what is left of it is "blocked"
 * (DRAINED reports when it is out). Returns the bytes still queued on ``sid``. */
static Py_ssize_t whole_left(Codec *self, int32_t sid) {
    stream_t *st = map_get(self, sid);  /* gone if the flush closed the stream */
    if (st == NULL) return 0;
    if (st->buffered > 0) st->blocked = 1;
    return st->buffered;
}

/* send_response(sid, headers, data, trailers) -> bytes still queued.
 * A whole response: HEADERS, the body (None or b"" for none) and trailers (None or [] for
 * none) are submitted together and serialized in one pass, so a unary gRPC answer costs
 * one call and one nghttp2_session_mem_send. */
static PyObject *Codec_send_response(Codec *self, PyObject *const *args, Py_ssize_t nargs) {
    int32_t sid;
    int no_data, no_trailers;
    if (nargs != 4) return PyErr_Format(PyExc_TypeError, "send_response() takes 4 arguments");
    if (self->client) return PyErr_Format(PyExc_RuntimeError, "send_response() on a client codec");
    if (parse_sid(args[0], &sid) < 0) return NULL;
    PyObject *data = body_arg(args[2], &no_data);
    if (data == NULL && !no_data) return NULL;
    PyObject *trailers = trailers_arg(args[3], &no_trailers);
    if (trailers == NULL && !no_trailers) {
        Py_XDECREF(data);
        return NULL;
    }
    nvbuf_t nb;
    if (nv_build(&nb, args[1]) < 0) {
        Py_XDECREF(data);
        Py_XDECREF(trailers);
        return NULL;
    }
    if (enter(self) < 0) {
        nv_release(&nb);
        Py_XDECREF(data);
        Py_XDECREF(trailers);
        return NULL;
    }
    stream_t *st = map_get(self, sid);
    int rv = 0;
    if (st == NULL || st->local_reset) {
        /* Closed or reset: the driver has had, or will get, the RESET. */
        Py_XDECREF(data);
        Py_XDECREF(trailers);
    } else if (st->providing || st->end) {
        nv_release(&nb);
        Py_XDECREF(data);
        Py_XDECREF(trailers);
        self->busy = 0;
        return PyErr_Format(PyExc_ValueError, "stream %d: the response was already started", sid);
    } else if (data == NULL && trailers == NULL) {
        rv = nghttp2_submit_headers(self->session, NGHTTP2_FLAG_END_STREAM, sid, NULL, nb.nva, nb.n, NULL);
    } else {
        if (body_whole(st, data, trailers) < 0) {
            nv_release(&nb);
            return leave(self, NULL);
        }
        nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = read_body};
        rv = nghttp2_submit_response(self->session, sid, nb.nva, nb.n, &prd);
        if (rv != 0) {
            stream_clear_queue(st);
            st->providing = 0;
            st->end = 0;
        }
    }
    nv_release(&nb);
    if (rv != 0 && rv != NGHTTP2_ERR_INVALID_ARGUMENT) {
        fail_rv(self, rv);
        return NULL;
    }
    if (flush(self) < 0) return leave(self, NULL);
    return leave(self, PyLong_FromSsize_t(whole_left(self, sid)));
}

/* send_request(headers, data, trailers) -> stream id.
 * A whole request (client): HEADERS, body and trailers submitted and serialized at once.
 * ``buffered(sid)`` is exact on return. */
static PyObject *Codec_send_request(Codec *self, PyObject *const *args, Py_ssize_t nargs) {
    int no_data, no_trailers;
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "send_request() takes 3 arguments");
    if (!self->client) return PyErr_Format(PyExc_RuntimeError, "send_request() on a server codec");
    PyObject *data = body_arg(args[1], &no_data);
    if (data == NULL && !no_data) return NULL;
    PyObject *trailers = trailers_arg(args[2], &no_trailers);
    if (trailers == NULL && !no_trailers) {
        Py_XDECREF(data);
        return NULL;
    }
    nvbuf_t nb;
    if (nv_build(&nb, args[0]) < 0) {
        Py_XDECREF(data);
        Py_XDECREF(trailers);
        return NULL;
    }
    if (enter(self) < 0) {
        nv_release(&nb);
        Py_XDECREF(data);
        Py_XDECREF(trailers);
        return NULL;
    }
    int32_t next = (int32_t)nghttp2_session_get_next_stream_id(self->session);
    stream_t *st = next > 0 ? stream_new(self, next) : NULL;
    if (st == NULL) {
        nv_release(&nb);
        Py_XDECREF(data);
        Py_XDECREF(trailers);
        self->busy = 0;
        if (next <= 0) {
            fail_rv(self, NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE);
            return NULL;
        }
        return PyErr_NoMemory();
    }
    int32_t sid;
    if (data == NULL && trailers == NULL) {
        sid = nghttp2_submit_request(self->session, NULL, nb.nva, nb.n, NULL, st);
    } else {
        if (body_whole(st, data, trailers) < 0) {
            nv_release(&nb);
            stream_free(self, st);
            return leave(self, NULL);
        }
        nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = read_body};
        sid = nghttp2_submit_request(self->session, NULL, nb.nva, nb.n, &prd, st);
    }
    nv_release(&nb);
    if (sid < 0) {
        stream_free(self, st);
        fail_rv(self, sid);
        return NULL;
    }
    st->known = 1;
    if (flush(self) < 0) return leave(self, NULL);
    whole_left(self, sid);
    return leave(self, PyLong_FromLong(sid));
}

static PyObject *Codec_buffered(Codec *self, PyObject *arg) {
    int32_t sid;
    if (parse_sid(arg, &sid) < 0) return NULL;
    stream_t *st = map_get(self, sid);
    return PyLong_FromSsize_t(st ? st->buffered : 0);
}

static PyObject *Codec_consumed(Codec *self, PyObject *const *args, Py_ssize_t nargs) {
    int32_t sid;
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "consumed() takes 2 arguments");
    if (parse_sid(args[0], &sid) < 0) return NULL;
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "consumed() needs n >= 0, got %zd", n);
    if (n == 0) Py_RETURN_NONE;
    if (enter(self) < 0) return NULL;
    int rv = nghttp2_session_consume(self->session, sid, (size_t)n);
    if (rv != 0 && nghttp2_is_fatal(rv)) {
        fail_rv(self, rv);
        return NULL;
    }
    return leave(self, Py_NewRef(Py_None));
}

static PyObject *Codec_reset(Codec *self, PyObject *const *args, Py_ssize_t nargs) {
    int32_t sid;
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "reset() takes 2 arguments");
    if (parse_sid(args[0], &sid) < 0) return NULL;
    unsigned long code = PyLong_AsUnsignedLong(args[1]);
    if (code == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    if (enter(self) < 0) return NULL;
    stream_t *st = map_get(self, sid);
    if (st != NULL) {
        stream_clear_queue(st);
        st->local_reset = 1;
        st->end = 0;
        st->blocked = 0;
    }
    int rv = nghttp2_submit_rst_stream(self->session, NGHTTP2_FLAG_NONE, sid, (uint32_t)code);
    if (rv != 0 && nghttp2_is_fatal(rv)) {
        fail_rv(self, rv);
        return NULL;
    }
    /* Serialize now: the stream closes as its RST_STREAM goes out, so open_streams() is
       right at once, as with the reference codec. */
    if (flush(self) < 0) return leave(self, NULL);
    return leave(self, Py_NewRef(Py_None));
}

static PyObject *Codec_goaway(Codec *self, PyObject *const *args, Py_ssize_t nargs) {
    unsigned long code = NGHTTP2_NO_ERROR;
    if (nargs > 1) return PyErr_Format(PyExc_TypeError, "goaway() takes at most 1 argument");
    if (nargs == 1) {
        code = PyLong_AsUnsignedLong(args[0]);
        if (code == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    }
    if (enter(self) < 0) return NULL;
    int32_t last = nghttp2_session_get_last_proc_stream_id(self->session);
    int rv = nghttp2_submit_goaway(self->session, NGHTTP2_FLAG_NONE, last, (uint32_t)code, NULL, 0);
    if (rv == 0) self->goaway_requested++;
    else if (nghttp2_is_fatal(rv)) {
        fail_rv(self, rv);
        return NULL;
    }
    return leave(self, Py_NewRef(Py_None));
}

static PyObject *Codec_remote_max_streams(Codec *self, PyObject *unused) {
    (void)unused;
    if (self->session == NULL) return PyErr_Format(PyExc_RuntimeError, "NgCodec not initialized");
    uint32_t v = nghttp2_session_get_remote_settings(self->session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    return PyLong_FromUnsignedLong(v);
}

static PyObject *Codec_open_streams(Codec *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromSize_t(self->count);
}

static PyMethodDef Codec_methods[] = {
    {"initiate", (PyCFunction)Codec_initiate, METH_NOARGS, "Queue the connection preface and SETTINGS."},
    {"feed", (PyCFunction)Codec_feed, METH_O, "Process bytes from the peer; return the events."},
    {"pending", (PyCFunction)Codec_pending, METH_NOARGS, "Bytes to write to the peer (cleared)."},
    {"request", (PyCFunction)(void (*)(void))Codec_request, METH_FASTCALL, "Open a stream; return its id."},
    {"send_headers", (PyCFunction)(void (*)(void))Codec_send_headers, METH_FASTCALL, "Response, 1xx or trailers."},
    {"send_data", (PyCFunction)(void (*)(void))Codec_send_data, METH_FASTCALL, "Queue body bytes."},
    {"send_response", (PyCFunction)(void (*)(void))Codec_send_response, METH_FASTCALL,
     "A whole response (headers, body, trailers) in one pass; returns the bytes still queued."},
    {"send_request", (PyCFunction)(void (*)(void))Codec_send_request, METH_FASTCALL,
     "A whole request (headers, body, trailers) in one pass; returns the stream id."},
    {"buffered", (PyCFunction)Codec_buffered, METH_O, "Bytes queued on a stream and not yet sent."},
    {"consumed", (PyCFunction)(void (*)(void))Codec_consumed, METH_FASTCALL, "Return window for received DATA."},
    {"reset", (PyCFunction)(void (*)(void))Codec_reset, METH_FASTCALL, "Send RST_STREAM."},
    {"goaway", (PyCFunction)(void (*)(void))Codec_goaway, METH_FASTCALL, "Send GOAWAY."},
    {"remote_max_streams", (PyCFunction)Codec_remote_max_streams, METH_NOARGS, "Peer's max concurrent streams."},
    {"open_streams", (PyCFunction)Codec_open_streams, METH_NOARGS, "Streams currently open."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CodecType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "monolake.core.proto.http2._nghttp2.NgCodec",
    .tp_basicsize = sizeof(Codec),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One HTTP/2 connection over libnghttp2 (see monolake.core.proto.http2._codec.Codec).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Codec_init,
    .tp_dealloc = (destructor)Codec_dealloc,
    .tp_methods = Codec_methods,
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_nghttp2", "HTTP/2 codec over libnghttp2.", -1, NULL, NULL, NULL, NULL, NULL,
};

static void find_options(void) {
    /* dlsym through libnghttp2's own handle: the extension is loaded RTLD_LOCAL. */
    Dl_info info;
    if (dladdr((void *)nghttp2_session_server_new2, &info) == 0 || info.dli_fname == NULL) return;
    void *lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (lib == NULL) return;
    *(void **)&opt_reset_rate_limit = dlsym(lib, "nghttp2_option_set_stream_reset_rate_limit");
    *(void **)&opt_max_continuations = dlsym(lib, "nghttp2_option_set_max_continuations");
    dlclose(lib);  /* still loaded: the extension links it */
}

PyMODINIT_FUNC PyInit__nghttp2(void) {
    PyObject *codec_mod = PyImport_ImportModule("monolake.core.proto.http2._codec");
    if (codec_mod == NULL) return NULL;
    H2ConnectionError = PyObject_GetAttrString(codec_mod, "H2ConnectionError");
    Py_DECREF(codec_mod);
    if (H2ConnectionError == NULL) return NULL;
    find_options();
    if (SETTINGS_EVENT == NULL && (SETTINGS_EVENT = Py_BuildValue("(i)", EV_SETTINGS)) == NULL) return NULL;
    if (PyType_Ready(&CodecType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "NgCodec", (PyObject *)&CodecType) < 0 ||
        PyModule_AddStringConstant(m, "NGHTTP2_VERSION", nghttp2_version(0)->version_str) < 0 ||
        PyModule_AddIntConstant(m, "HAS_RESET_RATE_LIMIT", opt_reset_rate_limit != NULL) < 0 ||
        PyModule_AddIntConstant(m, "HAS_MAX_CONTINUATIONS", opt_max_continuations != NULL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
