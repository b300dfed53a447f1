/* One pass over an upstream HTTP/1 response head, for the common shape only.
 *
 * scan(buf, pos, max_headers, max_head_bytes) looks at the response starting at
 * buf[pos] and returns either
 *   (head_end, status, reason, version, block, content_length, hop)
 * or None: "not the common shape, let llhttp parse it". The common shape is
 * narrower than what llhttp accepts, never wider: a whole head in the buffer,
 * "HTTP/1.1" or "HTTP/1.0", a status in 200-599, a reason of visible ASCII and
 * spaces, CRLF line ends, token names, values of visible ASCII, SP and HTAB, at
 * most one Content-Length of digits or one Transfer-Encoding of exactly "chunked"
 * (HTTP/1.1, not 204/304), no Upgrade or Proxy-Connection, Connection tokens only "close"/"keep-alive", and a response
 * that keeps the connection alive. Anything else (bad input included) is None,
 * and llhttp then parses it, or reports today's error. This never raises for
 * what is in the buffer.
 *
 * block: the header lines as sent (CRLF ends kept), without the hop-by-hop lines
 * that ResponseReader's regex cut removes (Connection, Content-Length, Keep-Alive,
 * Proxy-Authenticate, Proxy-Authorization, TE, Trailer); hop: those lines as
 * (lowercased name, value without surrounding OWS) in order, or None when none.
 * content_length: -1 when absent, -2 for a chunked body (llhttp then reads the body). head_end: the offset after the empty line.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* RFC 9110 tchar. */
static unsigned char TCHAR[256];
/* Field value bytes taken here: HTAB, SP, VCHAR (no obs-text, no controls). */
static unsigned char VCHAR[256];

enum { H_NONE, H_CL, H_TE, H_CONNECTION, H_CUT, H_DECLINE };

static PyObject *NAME_TE_FULL, *NAME_CL, *NAME_CONNECTION, *NAME_KEEP_ALIVE, *NAME_PAUTHN, *NAME_PAUTHZ, *NAME_TE, *NAME_TRAILER;
static PyObject *V11, *V10, *EMPTY, *REASON_OK;

static int
ieq(const unsigned char *s, const char *lower, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((s[i] | 0x20) != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

/* What a field name is to this scan; *name gets the hop name object for a cut line. */
static int
classify(const unsigned char *s, Py_ssize_t n, PyObject **name)
{
    /* Only letters and '-' can match: (c | 0x20) folds case for letters and leaves '-' as is;
       other tchars that fold onto a letter ('@' -> '`' etc.) never equal one. */
    switch (n) {
    case 2:
        if (ieq(s, "te", 2)) { *name = NAME_TE; return H_CUT; }
        break;
    case 7:
        if (ieq(s, "trailer", 7)) { *name = NAME_TRAILER; return H_CUT; }
        if (ieq(s, "upgrade", 7)) return H_DECLINE;
        break;
    case 10:
        if (ieq(s, "connection", 10)) { *name = NAME_CONNECTION; return H_CONNECTION; }
        if (ieq(s, "keep-alive", 10)) { *name = NAME_KEEP_ALIVE; return H_CUT; }
        break;
    case 14:
        if (ieq(s, "content-length", 14)) { *name = NAME_CL; return H_CL; }
        break;
    case 16:
        if (ieq(s, "proxy-connection", 16)) return H_DECLINE;
        break;
    case 17:
        if (ieq(s, "transfer-encoding", 17)) { *name = NAME_TE_FULL; return H_TE; }
        break;
    case 18:
        if (ieq(s, "proxy-authenticate", 18)) { *name = NAME_PAUTHN; return H_CUT; }
        break;
    case 19:
        if (ieq(s, "proxy-authorization", 19)) { *name = NAME_PAUTHZ; return H_CUT; }
        break;
    }
    return H_NONE;
}

/* Connection tokens: 1 close, 2 keep-alive, or'ed into *flags; 0 when a token is anything
   else (an empty one included). */
static int
connection_tokens(const unsigned char *s, Py_ssize_t n, int *flags)
{
    Py_ssize_t i = 0;
    for (;;) {
        while (i < n && (s[i] == ' ' || s[i] == '\t'))
            i++;
        Py_ssize_t start = i;
        while (i < n && s[i] != ',' && s[i] != ' ' && s[i] != '\t')
            i++;
        Py_ssize_t len = i - start;
        if (len == 5 && ieq(s + start, "close", 5))
            *flags |= 1;
        else if (len == 10 && ieq(s + start, "keep-alive", 10))
            *flags |= 2;
        else
            return 0;
        while (i < n && (s[i] == ' ' || s[i] == '\t'))
            i++;
        if (i == n)
            return 1;
        if (s[i] != ',')
            return 0;
        i++;
    }
}

typedef struct {
    Py_ssize_t start, end; /* a kept run of lines */
} Run;

#define MAX_RUNS 32

static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan(buf: bytes, pos: int, max_headers: int, max_head_bytes: int)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_headers = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_head = PyLong_AsSsize_t(args[3]);
    if ((pos == -1 || max_headers == -1 || max_head == -1) && PyErr_Occurred())
        return NULL;
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (pos < 0 || pos >= n || max_head <= 0)
        Py_RETURN_NONE;
    /* The head must end (its empty line included) within max_head bytes of pos. */
    Py_ssize_t lim = (n - pos > max_head) ? pos + max_head : n;
    const unsigned char *p = b + pos;
    /* "HTTP/1.x ddd" then SP or CR: 13 bytes at least, and the head's CRLF CRLF. */
    if (lim - pos < 16 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '1' && p[7] != '0') || p[8] != ' ')
        Py_RETURN_NONE;
    if (p[9] < '2' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9')
        Py_RETURN_NONE;
    int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    int minor = p[7] - '0';
    Py_ssize_t q = pos + 12;
    if (b[q] == ' ') {
        q++;
        while (q < lim && b[q] >= 0x20 && b[q] < 0x7f)
            q++;
    }
    if (q + 1 >= lim || b[q] != '\r' || b[q + 1] != '\n')
        Py_RETURN_NONE;
    Py_ssize_t line_end = q;
    q += 2;

    Run runs[MAX_RUNS + 1]; /* a run before each cut line, and one after the last */
    int nruns = 0;
    Py_ssize_t run_start = q, kept_size = 0;
    struct {
        PyObject *name;
        Py_ssize_t vs, ve;
    } hops[MAX_RUNS];
    int nhops = 0;
    Py_ssize_t nlines = 0;
    long long cl = -1;
    int conn = 0, chunked = 0;
    for (;;) {
        if (q + 1 >= lim)
            Py_RETURN_NONE; /* incomplete here, or over max_head: llhttp decides */
        if (b[q] == '\r') {
            if (b[q + 1] != '\n')
                Py_RETURN_NONE;
            break;
        }
        Py_ssize_t ns = q;
        while (q < lim && TCHAR[b[q]])
            q++;
        if (q == ns || q >= lim || b[q] != ':')
            Py_RETURN_NONE;
        Py_ssize_t nlen = q - ns;
        q++;
        Py_ssize_t vs = q;
        while (q < lim && VCHAR[b[q]])
            q++;
        if (q + 1 >= lim || b[q] != '\r' || b[q + 1] != '\n')
            Py_RETURN_NONE;
        Py_ssize_t ve = q;
        q += 2;
        if (++nlines > max_headers)
            Py_RETURN_NONE;
        PyObject *hname = NULL;
        int kind = classify(b + ns, nlen, &hname);
        if (kind == H_NONE)
            continue;
        if (kind == H_DECLINE)
            Py_RETURN_NONE;
        /* OWS off the value */
        while (vs < ve && (b[vs] == ' ' || b[vs] == '\t'))
            vs++;
        while (ve > vs && (b[ve - 1] == ' ' || b[ve - 1] == '\t'))
            ve--;
        if (kind == H_CL) {
            if (cl >= 0 || ve == vs || ve - vs > 15)
                Py_RETURN_NONE;
            long long v = 0;
            for (Py_ssize_t i = vs; i < ve; i++) {
                if (b[i] < '0' || b[i] > '9')
                    Py_RETURN_NONE;
                v = v * 10 + (b[i] - '0');
            }
            cl = v;
        }
        else if (kind == H_TE) {
            if (chunked || ve - vs != 7 || !ieq(b + vs, "chunked", 7))
                Py_RETURN_NONE;
            chunked = 1;
        }
        else if (kind == H_CONNECTION) {
            if (!connection_tokens(b + vs, ve - vs, &conn))
                Py_RETURN_NONE;
        }
        if (nhops == MAX_RUNS)
            Py_RETURN_NONE;
        hops[nhops].name = hname;
        hops[nhops].vs = vs;
        hops[nhops].ve = ve;
        nhops++;
        /* The line [ns, q) is cut: close the run of kept lines before it. */
        if (ns > run_start) {
            runs[nruns].start = run_start;
            runs[nruns].end = ns;
            kept_size += ns - run_start;
            nruns++;
        }
        run_start = q;
    }
    Py_ssize_t head_end = q + 2;
    if (chunked) {
        if (cl >= 0 || minor == 0 || status == 204 || status == 304)
            Py_RETURN_NONE;
        cl = -2;
    }
    /* Keep-alive as llhttp reads it; the caller hands the rest to llhttp otherwise. */
    if (conn == 3 || (minor == 1 ? (conn & 1) : !(conn & 2)))
        Py_RETURN_NONE;
    if (q > run_start) {
        runs[nruns].start = run_start;
        runs[nruns].end = q;
        kept_size += q - run_start;
        nruns++;
    }

    PyObject *block, *reason, *hop, *result;
    if (nruns == 0) {
        block = Py_NewRef(EMPTY);
    }
    else if (nruns == 1) {
        block = PyBytes_FromStringAndSize((const char *)b + runs[0].start, runs[0].end - runs[0].start);
    }
    else {
        block = PyBytes_FromStringAndSize(NULL, kept_size);
        if (block != NULL) {
            char *out = PyBytes_AS_STRING(block);
            for (int i = 0; i < nruns; i++) {
                memcpy(out, b + runs[i].start, runs[i].end - runs[i].start);
                out += runs[i].end - runs[i].start;
            }
        }
    }
    if (block == NULL)
        return NULL;
    /* As ResponseReader's _reason: after "HTTP/1.x ddd ", empty when there is nothing. */
    if (line_end <= pos + 13)
        reason = Py_NewRef(EMPTY);
    else if (line_end == pos + 15 && b[pos + 13] == 'O' && b[pos + 14] == 'K')
        reason = Py_NewRef(REASON_OK);
    else
        reason = PyBytes_FromStringAndSize((const char *)b + pos + 13, line_end - pos - 13);
    if (reason == NULL) {
        Py_DECREF(block);
        return NULL;
    }
    if (nhops == 0) {
        hop = Py_NewRef(Py_None);
    }
    else {
        hop = PyList_New(nhops);
        for (int i = 0; hop != NULL && i < nhops; i++) {
            Py_ssize_t vlen = hops[i].ve - hops[i].vs;
            /* "Connection: keep-alive", in nearly every response: the shared object, not a new one. */
            PyObject *value = vlen == 10 && memcmp(b + hops[i].vs, "keep-alive", 10) == 0
                                  ? Py_NewRef(NAME_KEEP_ALIVE)
                                  : PyBytes_FromStringAndSize((const char *)b + hops[i].vs, vlen);
            PyObject *pair = value == NULL ? NULL : PyTuple_Pack(2, hops[i].name, value);
            Py_XDECREF(value);
            if (pair == NULL)
                Py_CLEAR(hop);
            else
                PyList_SET_ITEM(hop, i, pair);
        }
        if (hop == NULL) {
            Py_DECREF(block);
            Py_DECREF(reason);
            return NULL;
        }
    }
    /* The tuple filled directly: Py_BuildValue would parse its format string on every response. */
    PyObject *end_obj = PyLong_FromSsize_t(head_end);
    PyObject *status_obj = PyLong_FromLong(status);
    PyObject *cl_obj = PyLong_FromLongLong(cl);
    result = PyTuple_New(7);
    if (end_obj == NULL || status_obj == NULL || cl_obj == NULL || result == NULL) {
        Py_XDECREF(end_obj);
        Py_XDECREF(status_obj);
        Py_XDECREF(cl_obj);
        Py_XDECREF(result);
        Py_DECREF(block);
        Py_DECREF(reason);
        Py_DECREF(hop);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, end_obj); /* steals */
    PyTuple_SET_ITEM(result, 1, status_obj);
    PyTuple_SET_ITEM(result, 2, reason);
    PyTuple_SET_ITEM(result, 3, Py_NewRef(minor ? V11 : V10));
    PyTuple_SET_ITEM(result, 4, block);
    PyTuple_SET_ITEM(result, 5, cl_obj);
    PyTuple_SET_ITEM(result, 6, hop);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(buf, pos, max_headers, max_head_bytes) -> (head_end, status, reason, version, block, "
     "content_length, hop) | None: a common response head at buf[pos], or None for llhttp."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_h1resp", "Native scan of common HTTP/1 response heads.", -1, methods,
};

PyMODINIT_FUNC
PyInit__h1resp(void)
{
    const char *extra = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        TCHAR[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                   (c != 0 && strchr(extra, c) != NULL);
        VCHAR[c] = c == '\t' || (c >= 0x20 && c < 0x7f);
    }
    NAME_TE_FULL = PyBytes_FromString("transfer-encoding");
    NAME_CL = PyBytes_FromString("content-length");
    NAME_CONNECTION = PyBytes_FromString("connection");
    NAME_KEEP_ALIVE = PyBytes_FromString("keep-alive");
    NAME_PAUTHN = PyBytes_FromString("proxy-authenticate");
    NAME_PAUTHZ = PyBytes_FromString("proxy-authorization");
    NAME_TE = PyBytes_FromString("te");
    NAME_TRAILER = PyBytes_FromString("trailer");
    V11 = PyBytes_FromString("1.1");
    V10 = PyBytes_FromString("1.0");
    EMPTY = PyBytes_FromStringAndSize(NULL, 0);
    REASON_OK = PyBytes_FromString("OK");
    if (!NAME_TE_FULL || !NAME_CL || !NAME_CONNECTION || !NAME_KEEP_ALIVE || !NAME_PAUTHN || !NAME_PAUTHZ || !NAME_TE ||
        !NAME_TRAILER || !V11 || !V10 || !EMPTY || !REASON_OK)
        return NULL;
    return PyModule_Create(&moduledef);
}
