/* One-pass scan of a common HTTP/1.x request head (``RequestReader``'s fast path).
 *
 * llhttp (through httptools) calls Python once per field name, once per value, and
 * for the target, the message start and the head's end. ``scan_head`` reads a whole
 * head in one C loop and returns what those callbacks build, as Python objects made
 * once: the end-to-end (name, value) pairs and their lowercased names (``Headers``),
 * the hop-by-hop pairs, Host and its lowercased host part, Content-Length.
 *
 * It is a filter in front of llhttp, never a second parser with its own verdicts: it
 * accepts a strict subset of what llhttp accepts and returns None for everything else
 * (anything unusual, anything invalid, an incomplete head, a limit reached), and the
 * reader then feeds llhttp from the message's start, which accepts it or produces
 * today's error. It never raises for bad input. What it accepts:
 *
 *   method SP origin-form SP "HTTP/1." ("1" / "0") CRLF
 *   *( token ":" OWS *( VCHAR / SP / HTAB ) CRLF )
 *   CRLF
 *
 * with a method from a short list, a target of RFC 3986 path/query characters only,
 * field values of visible ASCII (no obs-text, no control characters). Refused as a
 * whole: Transfer-Encoding, Upgrade, Proxy-Connection, a Connection other than one
 * "keep-alive", a second Content-Length or Host or Connection, a Content-Length that
 * is not 1 to 18 digits, an Expect other than 100-continue, a Host that is empty,
 * an IP literal or not reg-name [":" port], an HTTP/1.1 request without Host, a
 * request that is not kept alive (HTTP/1.0 without "Connection: keep-alive": llhttp
 * then closes its side), empty lines before the request line, obs-fold, bare CR or
 * LF, and a head over the reader's limits (request line, head size, field count).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* Character classes. */
#define C_TCHAR 1 /* RFC 9110 token */
#define C_VALUE 2 /* field value: VCHAR, SP, HTAB */
#define C_URL 4   /* origin-form: RFC 3986 pchar, "/", "?" */
#define C_REG 8   /* Host reg-name (as _parse._HOST; no ":") */
static unsigned char cls[256];

static void init_classes(void) {
    const char *tchar_extra = "!#$%&'*+-.^_`|~";
    const char *url_extra = "-._~%!$&'()*+,;=:@/?";
    const char *reg_extra = "-._~%!$&'()*+;=";
    for (int c = 0; c < 256; c++) {
        int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        unsigned char k = 0;
        if (alnum || (c && strchr(tchar_extra, c))) k |= C_TCHAR;
        if ((c >= 0x21 && c <= 0x7e) || c == ' ' || c == '\t') k |= C_VALUE;
        if (alnum || (c && strchr(url_extra, c))) k |= C_URL;
        if (alnum || (c && strchr(reg_extra, c))) k |= C_REG;
        cls[c] = k;
    }
}

static PyObject *M_GET, *M_HEAD, *M_POST, *M_PUT, *M_DELETE, *M_OPTIONS, *M_PATCH;
static PyObject *V_11, *V_10;
static PyObject *L_HOST, *L_CONNECTION, *L_KEEP_ALIVE, *L_CONTENT_LENGTH, *L_EXPECT, *L_TE, *L_TRAILER,
    *L_PROXY_AUTHENTICATE, *L_PROXY_AUTHORIZATION;

static inline int lower_c(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

/* Whether s[0:n] equals the lowercase literal ``lit`` (of length n), ignoring case. */
static int ieq(const unsigned char *s, Py_ssize_t n, const char *lit) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower_c(s[i]) != (unsigned char)lit[i]) return 0;
    return 1;
}

enum { F_PLAIN, F_HOST, F_CL, F_CONNECTION, F_EXPECT, F_DROP, F_REFUSE };

/* The field's role, from its name; ``lname`` gets the shared lowercased name of a hop-by-hop
 * field that is kept in the hop list. */
static int classify(const unsigned char *s, Py_ssize_t n, PyObject **lname) {
    *lname = NULL;
    switch (n) {
    case 2:
        if (ieq(s, n, "te")) { *lname = L_TE; return F_DROP; }
        break;
    case 4:
        if (ieq(s, n, "host")) return F_HOST;
        break;
    case 6:
        if (ieq(s, n, "expect")) return F_EXPECT;
        break;
    case 7:
        if (ieq(s, n, "trailer")) { *lname = L_TRAILER; return F_DROP; }
        if (ieq(s, n, "upgrade")) return F_REFUSE;
        break;
    case 10:
        if (ieq(s, n, "connection")) return F_CONNECTION;
        if (ieq(s, n, "keep-alive")) { *lname = L_KEEP_ALIVE; return F_DROP; }
        break;
    case 14:
        if (ieq(s, n, "content-length")) return F_CL;
        break;
    case 16:
        if (ieq(s, n, "proxy-connection")) return F_REFUSE;
        break;
    case 17:
        if (ieq(s, n, "transfer-encoding")) return F_REFUSE;
        break;
    case 18:
        if (ieq(s, n, "proxy-authenticate")) { *lname = L_PROXY_AUTHENTICATE; return F_DROP; }
        break;
    case 19:
        if (ieq(s, n, "proxy-authorization")) { *lname = L_PROXY_AUTHORIZATION; return F_DROP; }
        break;
    }
    return F_PLAIN;
}

/* A new reference to s[0:n] lowercased; ``same`` (the name as sent) when it has no uppercase. */
static PyObject *lowered(const unsigned char *s, Py_ssize_t n, PyObject *same) {
    Py_ssize_t i = 0;
    while (i < n && !(s[i] >= 'A' && s[i] <= 'Z')) i++;
    if (i == n) {
        Py_INCREF(same);
        return same;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) return NULL;
    char *d = PyBytes_AS_STRING(out);
    memcpy(d, s, (size_t)i);
    for (; i < n; i++) d[i] = (char)lower_c(s[i]);
    return out;
}

/* Field names as sent -> (name, lowercased name), for the first NAMES_MAX names of up to
 * NAME_LEN_MAX bytes this process sees: a client sends the same few names in every request, so a
 * lookup replaces two allocations and a lowering per field. Names past the bound are made per
 * field, so junk names fill the table once and cost no more than without it afterwards. */
#define NAMES_SLOTS 1024 /* a power of two, at least twice NAMES_MAX */
#define NAMES_MAX 384
#define NAME_LEN_MAX 64
typedef struct {
    PyObject *name, *lname;
} Name;
static Name names[NAMES_SLOTS];
static int names_used;

static inline unsigned int name_hash(const unsigned char *s, Py_ssize_t n) {
    unsigned int h = 2166136261u; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ s[i]) * 16777619u;
    return h;
}

/* New references to the name as sent and lowercased (the same object when it has no
 * uppercase), or -1 when out of memory. */
static int name_objects(const unsigned char *s, Py_ssize_t n, PyObject **name, PyObject **lname) {
    Name *slot = NULL;
    if (n <= NAME_LEN_MAX) {
        unsigned int i = name_hash(s, n) & (NAMES_SLOTS - 1);
        for (;; i = (i + 1) & (NAMES_SLOTS - 1)) {
            Name *e = &names[i];
            if (e->name == NULL) {
                slot = e;
                break;
            }
            if (PyBytes_GET_SIZE(e->name) == n && memcmp(PyBytes_AS_STRING(e->name), s, (size_t)n) == 0) {
                Py_INCREF(e->name);
                Py_INCREF(e->lname);
                *name = e->name;
                *lname = e->lname;
                return 0;
            }
        }
    }
    *name = PyBytes_FromStringAndSize((const char *)s, n);
    if (*name == NULL) return -1;
    *lname = lowered(s, n, *name);
    if (*lname == NULL) {
        Py_CLEAR(*name);
        return -1;
    }
    if (slot != NULL && names_used < NAMES_MAX) {
        Py_INCREF(*name);
        Py_INCREF(*lname);
        slot->name = *name;
        slot->lname = *lname;
        names_used++;
    }
    return 0;
}

/* Append the pair (a, b), stealing both references (also on failure). */
static int append_pair(PyObject *list, PyObject *a, PyObject *b) {
    if (a == NULL || b == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        return -1;
    }
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(a);
        Py_DECREF(b);
        return -1;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    int r = PyList_Append(list, t);
    Py_DECREF(t);
    return r;
}

static PyObject *method_of(const unsigned char *p, Py_ssize_t avail, Py_ssize_t *len) {
#define M(lit, obj)                                                                  \
    if (avail > (Py_ssize_t)sizeof(lit) - 1 && memcmp(p, lit, sizeof(lit) - 1) == 0 && \
        p[sizeof(lit) - 1] == ' ') {                                                 \
        *len = sizeof(lit) - 1;                                                      \
        return obj;                                                                  \
    }
    switch (p[0]) {
    case 'G': M("GET", M_GET) break;
    case 'H': M("HEAD", M_HEAD) break;
    case 'P': M("POST", M_POST) M("PUT", M_PUT) M("PATCH", M_PATCH) break;
    case 'D': M("DELETE", M_DELETE) break;
    case 'O': M("OPTIONS", M_OPTIONS) break;
    }
#undef M
    return NULL;
}

/* scan_head(buf, pos, max_line, max_head, max_fields) -> tuple | None. See the module comment
 * and _h1req.pyi for the tuple. */
static PyObject *scan_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyBytes_CheckExact(args[0])) Py_RETURN_NONE;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_line = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_head = PyLong_AsSsize_t(args[3]);
    Py_ssize_t max_fields = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *bufobj = args[0];
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(bufobj);
    Py_ssize_t size = PyBytes_GET_SIZE(bufobj);
    if (pos < 0 || pos >= size) Py_RETURN_NONE;
    const unsigned char *start = buf + pos;
    /* Never look past the head limit: a longer head goes to llhttp (431), and a large read
     * that is no head is not walked to its end. */
    const unsigned char *end = (size - pos > max_head) ? start + max_head : buf + size;
    const unsigned char *p = start;
    if (end - p < 16) Py_RETURN_NONE; /* shorter than "GET / HTTP/1.1\r\n\r\n" (or max_head <= 0) */

    Py_ssize_t mlen;
    PyObject *method = method_of(p, end - p, &mlen);
    if (method == NULL) Py_RETURN_NONE;
    p += mlen + 1;
    const unsigned char *t0 = p;
    if (p >= end || *p != '/') Py_RETURN_NONE;
    while (p < end && (cls[*p] & C_URL)) p++;
    const unsigned char *t1 = p;
    if (end - p < 10 || memcmp(p, " HTTP/1.", 8) != 0 || p[9] != '\r') Py_RETURN_NONE;
    int v11;
    if (p[8] == '1') v11 = 1;
    else if (p[8] == '0') v11 = 0;
    else Py_RETURN_NONE;
    /* RequestReader.on_url's check (414): method, target, and 10 for the spaces and version. */
    if (mlen + (t1 - t0) + 10 > max_line) Py_RETURN_NONE;
    p += 10;
    if (p >= end || *p != '\n') Py_RETURN_NONE;
    p++;

    PyObject *target = NULL, *raw = NULL, *lower = NULL, *hop = NULL, *host = NULL, *lhost = NULL;
    PyObject *result = NULL;
    raw = PyList_New(0);
    lower = PyList_New(0);
    if (raw == NULL || lower == NULL) goto error;
    Py_ssize_t nfields = 0;
    long long cl = -1;
    int keep_alive_token = 0, expect = 0;
    for (;;) {
        if (end - p < 2) goto decline; /* incomplete (or at the limit) */
        if (p[0] == '\r') {
            if (p[1] != '\n') goto decline;
            p += 2;
            break;
        }
        const unsigned char *n0 = p;
        while (p < end && (cls[*p] & C_TCHAR)) p++;
        if (p == n0 || p >= end || *p != ':') goto decline;
        const unsigned char *n1 = p++;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const unsigned char *v0 = p;
        while (p < end && (cls[*p] & C_VALUE)) p++;
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') goto decline;
        const unsigned char *v1 = p;
        while (v1 > v0 && (v1[-1] == ' ' || v1[-1] == '\t')) v1--;
        p += 2;
        if (++nfields > max_fields) goto decline;
        Py_ssize_t nlen = n1 - n0, vlen = v1 - v0;
        PyObject *hname;
        switch (classify(n0, nlen, &hname)) {
        case F_PLAIN: {
            PyObject *name, *lname;
            if (name_objects(n0, nlen, &name, &lname) < 0) goto error;
            int r = PyList_Append(lower, lname);
            Py_DECREF(lname);
            if (r < 0) {
                Py_DECREF(name);
                goto error;
            }
            if (append_pair(raw, name, PyBytes_FromStringAndSize((const char *)v0, vlen)) < 0) goto error;
            break;
        }
        case F_HOST: {
            if (host != NULL || vlen == 0) goto decline;
            Py_ssize_t i = 0;
            while (i < vlen && (cls[v0[i]] & C_REG)) i++;
            Py_ssize_t hlen = i;
            if (hlen == 0) goto decline; /* empty, or an IP literal: llhttp's path decides */
            if (i < vlen) {
                if (v0[i] != ':') goto decline;
                for (i++; i < vlen; i++)
                    if (v0[i] < '0' || v0[i] > '9') goto decline;
            }
            host = PyBytes_FromStringAndSize((const char *)v0, vlen);
            if (host == NULL) goto error;
            lhost = hlen == vlen ? lowered(v0, hlen, host) : NULL;
            if (hlen != vlen) {
                lhost = PyBytes_FromStringAndSize(NULL, hlen);
                if (lhost != NULL)
                    for (i = 0; i < hlen; i++) PyBytes_AS_STRING(lhost)[i] = (char)lower_c(v0[i]);
            }
            if (lhost == NULL) goto error;
            if (PyList_Append(lower, L_HOST) < 0) goto error;
            PyObject *name, *lname;
            if (name_objects(n0, nlen, &name, &lname) < 0) goto error;
            Py_DECREF(lname);
            Py_INCREF(host);
            if (append_pair(raw, name, host) < 0) goto error;
            break;
        }
        case F_CL: {
            if (cl >= 0 || vlen == 0 || vlen > 18) goto decline;
            cl = 0;
            for (Py_ssize_t i = 0; i < vlen; i++) {
                if (v0[i] < '0' || v0[i] > '9') goto decline;
                cl = cl * 10 + (v0[i] - '0');
            }
            hname = L_CONTENT_LENGTH;
            goto hop_field;
        }
        case F_CONNECTION:
            if (keep_alive_token || vlen != 10 || !ieq(v0, vlen, "keep-alive")) goto decline;
            keep_alive_token = 1;
            hname = L_CONNECTION;
            goto hop_field;
        case F_EXPECT:
            if (expect || vlen != 12 || !ieq(v0, vlen, "100-continue")) goto decline;
            expect = 1;
            hname = L_EXPECT;
            goto hop_field;
        case F_DROP:
        hop_field:
            if (hop == NULL && (hop = PyList_New(0)) == NULL) goto error;
            Py_INCREF(hname);
            if (append_pair(hop, hname, PyBytes_FromStringAndSize((const char *)v0, vlen)) < 0) goto error;
            break;
        default: /* F_REFUSE */
            goto decline;
        }
    }
    if (v11 ? host == NULL : !keep_alive_token) goto decline;
    target = PyBytes_FromStringAndSize((const char *)t0, t1 - t0);
    if (target == NULL) goto error;
    if (host == NULL) {
        Py_INCREF(Py_None);
        host = Py_None;
        lhost = PyBytes_FromStringAndSize("", 0);
        if (lhost == NULL) goto error;
    }
    if (hop == NULL) {
        Py_INCREF(Py_None);
        hop = Py_None;
    }
    result = PyTuple_New(11);
    PyObject *end_obj = PyLong_FromSsize_t(p - buf);
    PyObject *cl_obj = PyLong_FromLongLong(cl);
    if (result == NULL || end_obj == NULL || cl_obj == NULL) {
        Py_XDECREF(result);
        Py_XDECREF(end_obj);
        Py_XDECREF(cl_obj);
        goto error;
    }
    PyObject *version = v11 ? V_11 : V_10;
    PyObject *expect_obj = expect ? Py_True : Py_False;
    Py_INCREF(method);
    Py_INCREF(version);
    Py_INCREF(expect_obj);
    PyObject *items[11] = {end_obj, method, target, version, raw, lower, hop, host, lhost, cl_obj, expect_obj};
    for (int i = 0; i < 11; i++) PyTuple_SET_ITEM(result, i, items[i]); /* steals */
    return result;

decline:
    Py_XDECREF(target);
    Py_XDECREF(raw);
    Py_XDECREF(lower);
    Py_XDECREF(hop);
    Py_XDECREF(host);
    Py_XDECREF(lhost);
    Py_RETURN_NONE;
error: /* out of memory: not ours to hide */
    Py_XDECREF(target);
    Py_XDECREF(raw);
    Py_XDECREF(lower);
    Py_XDECREF(hop);
    Py_XDECREF(host);
    Py_XDECREF(lhost);
    return NULL;
}

/* request_head(method, target, pairs, framing): the upstream request head as one bytes, sized
 * first and copied once (``_serialize.request_head``'s native path): no list of parts and no
 * join. ``pairs`` is a list of (name, value) tuples of bytes; anything else (a list as a pair, a
 * str, a bytes subclass) answers None and the Python path serialises it, raising what it
 * raises. Nothing is validated: the head is written as given, as the Python path does. */
static PyObject *request_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "request_head takes 4 arguments");
        return NULL;
    }
    PyObject *method = args[0], *target = args[1], *pairs = args[2], *framing = args[3];
    if (!PyBytes_CheckExact(method) || !PyBytes_CheckExact(target) || !PyList_CheckExact(pairs) ||
        !PyBytes_CheckExact(framing))
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(pairs);
    /* "M T HTTP/1.1\r\n" + fields + framing + "\r\n" */
    Py_ssize_t size = PyBytes_GET_SIZE(method) + 1 + PyBytes_GET_SIZE(target) + 11 + PyBytes_GET_SIZE(framing) + 2;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) Py_RETURN_NONE;
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        if (!PyBytes_CheckExact(name) || !PyBytes_CheckExact(value)) Py_RETURN_NONE;
        size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) return NULL;
    char *d = PyBytes_AS_STRING(out);
#define PUT(p, len)              \
    do {                         \
        memcpy(d, (p), (len));   \
        d += (len);              \
    } while (0)
    PUT(PyBytes_AS_STRING(method), PyBytes_GET_SIZE(method));
    *d++ = ' ';
    PUT(PyBytes_AS_STRING(target), PyBytes_GET_SIZE(target));
    PUT(" HTTP/1.1\r\n", 11);
    /* The list cannot change while this runs (no Python code runs here): sizes hold. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, i);
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        PUT(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name));
        PUT(": ", 2);
        PUT(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
        PUT("\r\n", 2);
    }
    PUT(PyBytes_AS_STRING(framing), PyBytes_GET_SIZE(framing));
    PUT("\r\n", 2);
#undef PUT
    return out;
}

static PyMethodDef methods[] = {
    {"scan_head", (PyCFunction)(void (*)(void))scan_head, METH_FASTCALL,
     "scan_head(buf, pos, max_line, max_head, max_fields): a common request head at buf[pos:] in one pass, "
     "or None to let llhttp parse it."},
    {"request_head", (PyCFunction)(void (*)(void))request_head, METH_FASTCALL,
     "request_head(method, target, pairs, framing): an HTTP/1.1 request head as one bytes, or None for "
     "pairs that are not a list of (bytes, bytes) tuples."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_h1req", NULL, -1, methods};

static PyObject *constant(const char *s) { return PyBytes_FromString(s); }

PyMODINIT_FUNC PyInit__h1req(void) {
    init_classes();
    PyObject **slots[] = {&M_GET, &M_HEAD, &M_POST, &M_PUT, &M_DELETE, &M_OPTIONS, &M_PATCH, &V_11, &V_10, &L_HOST,
                          &L_CONNECTION, &L_KEEP_ALIVE, &L_CONTENT_LENGTH, &L_EXPECT, &L_TE, &L_TRAILER,
                          &L_PROXY_AUTHENTICATE, &L_PROXY_AUTHORIZATION};
    const char *values[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "1.1", "1.0", "host",
                            "connection", "keep-alive", "content-length", "expect", "te", "trailer",
                            "proxy-authenticate", "proxy-authorization"};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        if (*slots[i] == NULL && (*slots[i] = constant(values[i])) == NULL) return NULL;
    }
    return PyModule_Create(&module);
}
