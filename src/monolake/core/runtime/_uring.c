/* monolake.core.runtime._uring: a thin io_uring ring for the event loop (runtime/uring/).
 *
 * Theory of operation. A Ring owns one io_uring instance and, optionally, one
 * provided-buffer ring (group 0) that multishot recvs draw from. Each submitted
 * operation carries a heap `op` whose address is the SQE's user_data; the op holds
 * a strong reference to its Python target (called as target(res, data, more) for
 * every completion) and to whatever memory the kernel reads from (the bytes being
 * sent), so nothing the kernel touches can be freed before its final completion.
 * The op is freed only after its final CQE (no IORING_CQE_F_MORE).
 *
 * SQEs are only queued by the op methods; run() submits them all and waits in a
 * single io_uring_enter, then copies the ready CQEs out, advances the CQ, and
 * dispatches each to its target. Exceptions raised by a target are reported as
 * unraisable (the Python side catches its own); KeyboardInterrupt/SystemExit are
 * re-raised after the batch, which is still dispatched completely.
 *
 * fork: a ring is never usable in a child (its mappings are shared with the
 * parent); a pthread_atfork child hook bumps a generation every ring checks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define BATCH 256
#define CANCEL_TAG ((__u64)0)

static unsigned long fork_generation = 0;
static void after_fork_child(void) { fork_generation++; }

enum op_kind { OP_RECV_MULTI, OP_RECV, OP_SEND, OP_SENDMSG, OP_ACCEPT_MULTI, OP_POLL };

typedef struct op {
    struct op *prev, *next; /* the ring's list of live ops, freed at close */
    int kind;
    PyObject *target; /* callable(res, data, more) */
    PyObject *keep;   /* bytes, tuple of bytes, or a recv buffer (bytes of nbytes) */
    struct iovec *iov;
    struct msghdr msg;
} op_t;

typedef struct {
    PyObject_HEAD
    struct io_uring ring;
    int ready;
    int running;
    int defer; /* IORING_SETUP_DEFER_TASKRUN: completions are posted only when we enter */
    unsigned long generation;
    Py_ssize_t live; /* ops not yet finished */
    op_t *ops;       /* head of the live list */
    /* provided buffers */
    struct io_uring_buf_ring *br;
    size_t br_bytes;
    char *bufs;
    unsigned buf_count;
    unsigned buf_size;
} Ring;

static int check_ring(Ring *self) {
    if (!self->ready) {
        PyErr_SetString(PyExc_ValueError, "io_uring ring is closed");
        return -1;
    }
    if (self->generation != fork_generation) {
        PyErr_SetString(PyExc_RuntimeError, "io_uring ring used in a forked child");
        return -1;
    }
    return 0;
}

static struct io_uring_sqe *get_sqe(Ring *self) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&self->ring);
    if (sqe == NULL) {
        /* Submission queue full: flush it and try once more. */
        int rc = io_uring_submit(&self->ring);
        if (rc < 0) {
            errno = -rc;
            PyErr_SetFromErrno(PyExc_OSError);
            return NULL;
        }
        sqe = io_uring_get_sqe(&self->ring);
        if (sqe == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "io_uring submission queue full");
            return NULL;
        }
    }
    return sqe;
}

static op_t *new_op(int kind, PyObject *target, PyObject *keep) {
    op_t *op = PyMem_Calloc(1, sizeof(op_t));
    if (op == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    op->kind = kind;
    Py_INCREF(target);
    op->target = target;
    Py_XINCREF(keep);
    op->keep = keep;
    return op;
}

static void free_op(op_t *op) {
    Py_XDECREF(op->target);
    Py_XDECREF(op->keep);
    PyMem_Free(op->iov);
    PyMem_Free(op);
}

static void unlink_op(Ring *self, op_t *op) {
    if (op->prev) op->prev->next = op->next;
    else self->ops = op->next;
    if (op->next) op->next->prev = op->prev;
    self->live--;
}

static PyObject *queued(Ring *self, op_t *op, struct io_uring_sqe *sqe) {
    io_uring_sqe_set_data(sqe, op);
    op->next = self->ops;
    if (self->ops) self->ops->prev = op;
    self->ops = op;
    self->live++;
    return PyLong_FromVoidPtr(op);
}

/* ---- construction ----------------------------------------------------------------- */

static int Ring_init(Ring *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"entries", "sqpoll_idle_ms", "buf_count", "buf_size", NULL};
    unsigned entries = 256, sqpoll = 0, buf_count = 128, buf_size = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|IIII", kwlist, &entries, &sqpoll, &buf_count,
                                     &buf_size))
        return -1;
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "Ring already initialised");
        return -1;
    }
    if (entries < 2 || entries > 32768) {
        PyErr_SetString(PyExc_ValueError, "entries must be between 2 and 32768");
        return -1;
    }
    if (buf_count && ((buf_count & (buf_count - 1)) || buf_count > 32768 || buf_size < 512)) {
        PyErr_SetString(PyExc_ValueError,
                        "buf_count must be a power of two <= 32768 and buf_size >= 512");
        return -1;
    }
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = entries * 4;
    if (sqpoll) {
        p.flags |= IORING_SETUP_SQPOLL;
        p.sq_thread_idle = sqpoll;
    } else {
        /* One thread submits and reaps, in run(): completion work is deferred to our
         * io_uring_enter instead of interrupting the worker (Linux 6.1+). */
        p.flags |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    }
    int rc = io_uring_queue_init_params(entries, &self->ring, &p);
    if (rc == -EINVAL && !sqpoll) {
        p.flags &= ~(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
        p.flags |= IORING_SETUP_COOP_TASKRUN; /* older kernels */
        rc = io_uring_queue_init_params(entries, &self->ring, &p);
        if (rc == -EINVAL) {
            p.flags &= ~IORING_SETUP_COOP_TASKRUN;
            rc = io_uring_queue_init_params(entries, &self->ring, &p);
        }
    }
    if (rc < 0) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->ready = 1;
    self->defer = (p.flags & IORING_SETUP_DEFER_TASKRUN) != 0;
    self->generation = fork_generation;
    if (buf_count) {
        size_t bytes = buf_count * sizeof(struct io_uring_buf);
        void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
        if (mem == MAP_FAILED) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        self->br = mem;
        self->br_bytes = bytes;
        if (posix_memalign((void **)&self->bufs, 4096, (size_t)buf_count * buf_size)) {
            self->bufs = NULL;
            PyErr_NoMemory();
            goto fail;
        }
        struct io_uring_buf_reg reg;
        memset(&reg, 0, sizeof reg);
        reg.ring_addr = (unsigned long)(uintptr_t)mem;
        reg.ring_entries = buf_count;
        reg.bgid = 0;
        rc = io_uring_register_buf_ring(&self->ring, &reg, 0);
        if (rc < 0) {
            errno = -rc;
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        io_uring_buf_ring_init(self->br);
        int mask = io_uring_buf_ring_mask(buf_count);
        for (unsigned i = 0; i < buf_count; i++)
            io_uring_buf_ring_add(self->br, self->bufs + (size_t)i * buf_size, buf_size, i, mask, i);
        io_uring_buf_ring_advance(self->br, buf_count);
        self->buf_count = buf_count;
        self->buf_size = buf_size;
    }
    return 0;
fail:
    io_uring_queue_exit(&self->ring);
    self->ready = 0;
    if (self->br) munmap(self->br, self->br_bytes);
    self->br = NULL;
    free(self->bufs);
    self->bufs = NULL;
    return -1;
}

static void ring_teardown(Ring *self) {
    if (!self->ready) return;
    self->ready = 0;
    if (self->generation == fork_generation) {
        /* Exiting the ring cancels everything in flight and waits for it: after
         * this the kernel touches none of the ops' memory, so they can go. */
        io_uring_queue_exit(&self->ring);
        if (self->br) munmap(self->br, self->br_bytes);
        free(self->bufs);
        while (self->ops) {
            op_t *op = self->ops;
            unlink_op(self, op);
            free_op(op);
        }
    }
    self->br = NULL;
    self->bufs = NULL;
}

static void Ring_dealloc(Ring *self) {
    ring_teardown(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Ring_close(Ring *self, PyObject *Py_UNUSED(ignored)) {
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "cannot close a ring while it dispatches");
        return NULL;
    }
    ring_teardown(self);
    Py_RETURN_NONE;
}

static PyObject *Ring_fileno(Ring *self, PyObject *Py_UNUSED(ignored)) {
    if (check_ring(self) < 0) return NULL;
    return PyLong_FromLong(self->ring.ring_fd);
}

/* ---- operations ------------------------------------------------------------------- */

static PyObject *Ring_recv_multishot(Ring *self, PyObject *args) {
    int fd;
    PyObject *target;
    if (!PyArg_ParseTuple(args, "iO", &fd, &target)) return NULL;
    if (check_ring(self) < 0) return NULL;
    if (!self->br) {
        PyErr_SetString(PyExc_ValueError, "ring has no provided buffers");
        return NULL;
    }
    struct io_uring_sqe *sqe = get_sqe(self);
    if (!sqe) return NULL;
    op_t *op = new_op(OP_RECV_MULTI, target, NULL);
    if (!op) {
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, CANCEL_TAG);
        return NULL;
    }
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    return queued(self, op, sqe);
}

static PyObject *Ring_recv(Ring *self, PyObject *args) {
    int fd;
    Py_ssize_t nbytes;
    PyObject *target;
    if (!PyArg_ParseTuple(args, "inO", &fd, &nbytes, &target)) return NULL;
    if (check_ring(self) < 0) return NULL;
    if (nbytes <= 0 || nbytes > (1 << 30)) {
        PyErr_SetString(PyExc_ValueError, "nbytes out of range");
        return NULL;
    }
    PyObject *buf = PyBytes_FromStringAndSize(NULL, nbytes);
    if (!buf) return NULL;
    struct io_uring_sqe *sqe = get_sqe(self);
    if (!sqe) {
        Py_DECREF(buf);
        return NULL;
    }
    op_t *op = new_op(OP_RECV, target, buf);
    Py_DECREF(buf);
    if (!op) {
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, CANCEL_TAG);
        return NULL;
    }
    io_uring_prep_recv(sqe, fd, PyBytes_AS_STRING(buf), (size_t)nbytes, 0);
    return queued(self, op, sqe);
}

static PyObject *Ring_send(Ring *self, PyObject *args) {
    int fd;
    PyObject *data, *target;
    if (!PyArg_ParseTuple(args, "iSO", &fd, &data, &target)) return NULL;
    if (check_ring(self) < 0) return NULL;
    struct io_uring_sqe *sqe = get_sqe(self);
    if (!sqe) return NULL;
    op_t *op = new_op(OP_SEND, target, data);
    if (!op) {
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, CANCEL_TAG);
        return NULL;
    }
    io_uring_prep_send(sqe, fd, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data),
                       MSG_NOSIGNAL);
    return queued(self, op, sqe);
}

static PyObject *Ring_sendmsg(Ring *self, PyObject *args) {
    int fd;
    PyObject *bufs, *target;
    if (!PyArg_ParseTuple(args, "iO!O", &fd, &PyTuple_Type, &bufs, &target)) return NULL;
    if (check_ring(self) < 0) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(bufs);
    if (n < 1 || n > 1024) {
        PyErr_SetString(PyExc_ValueError, "sendmsg takes 1 to 1024 buffers");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(bufs, i))) {
            PyErr_SetString(PyExc_TypeError, "sendmsg buffers must be bytes");
            return NULL;
        }
    }
    struct iovec *iov = PyMem_Malloc(sizeof(struct iovec) * (size_t)n);
    if (!iov) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyTuple_GET_ITEM(bufs, i);
        iov[i].iov_base = PyBytes_AS_STRING(b);
        iov[i].iov_len = (size_t)PyBytes_GET_SIZE(b);
    }
    struct io_uring_sqe *sqe = get_sqe(self);
    if (!sqe) {
        PyMem_Free(iov);
        return NULL;
    }
    op_t *op = new_op(OP_SENDMSG, target, bufs);
    if (!op) {
        PyMem_Free(iov);
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, CANCEL_TAG);
        return NULL;
    }
    op->iov = iov;
    op->msg.msg_iov = iov;
    op->msg.msg_iovlen = (size_t)n;
    io_uring_prep_sendmsg(sqe, fd, &op->msg, MSG_NOSIGNAL);
    return queued(self, op, sqe);
}

static PyObject *Ring_accept_multishot(Ring *self, PyObject *args) {
    int fd;
    PyObject *target;
    if (!PyArg_ParseTuple(args, "iO", &fd, &target)) return NULL;
    if (check_ring(self) < 0) return NULL;
    struct io_uring_sqe *sqe = get_sqe(self);
    if (!sqe) return NULL;
    op_t *op = new_op(OP_ACCEPT_MULTI, target, NULL);
    if (!op) {
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, CANCEL_TAG);
        return NULL;
    }
    /* Blocking descriptors: io_uring answers EAGAIN on O_NONBLOCK sockets instead
     * of waiting for readiness itself. */
    io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
    return queued(self, op, sqe);
}

static PyObject *Ring_poll(Ring *self, PyObject *args) {
    int fd, multishot;
    unsigned events;
    PyObject *target;
    if (!PyArg_ParseTuple(args, "iIpO", &fd, &events, &multishot, &target)) return NULL;
    if (check_ring(self) < 0) return NULL;
    struct io_uring_sqe *sqe = get_sqe(self);
    if (!sqe) return NULL;
    op_t *op = new_op(OP_POLL, target, NULL);
    if (!op) {
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, CANCEL_TAG);
        return NULL;
    }
    if (multishot)
        io_uring_prep_poll_multishot(sqe, fd, events);
    else
        io_uring_prep_poll_add(sqe, fd, events);
    return queued(self, op, sqe);
}

static PyObject *Ring_cancel(Ring *self, PyObject *arg) {
    /* The token must belong to an op whose final completion has not been dispatched
     * (the Python side forgets a token when its target sees more=False). */
    void *ptr = PyLong_AsVoidPtr(arg);
    if (ptr == NULL && PyErr_Occurred()) return NULL;
    if (check_ring(self) < 0) return NULL;
    struct io_uring_sqe *sqe = get_sqe(self);
    if (!sqe) return NULL;
    io_uring_prep_cancel(sqe, ptr, 0);
    io_uring_sqe_set_data64(sqe, CANCEL_TAG);
    Py_RETURN_NONE;
}

static PyObject *Ring_close_fd(Ring *self, PyObject *arg) {
    /* Close a descriptor through the ring, after the SQEs queued before it: the
     * number cannot be reused by an accept while earlier SQEs still name it. */
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "negative descriptor");
        return NULL;
    }
    if (check_ring(self) < 0) return NULL;
    struct io_uring_sqe *sqe = get_sqe(self);
    if (!sqe) return NULL;
    io_uring_prep_close(sqe, fd);
    io_uring_sqe_set_data64(sqe, CANCEL_TAG);
    Py_RETURN_NONE;
}

/* ---- the loop step ---------------------------------------------------------------- */

static PyObject *recv_data(Ring *self, struct io_uring_cqe *cqe) {
    if (!(cqe->flags & IORING_CQE_F_BUFFER)) Py_RETURN_NONE;
    unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    char *addr = self->bufs + (size_t)bid * self->buf_size;
    PyObject *data = NULL;
    if (cqe->res > 0) data = PyBytes_FromStringAndSize(addr, cqe->res);
    /* Give the buffer back at once: its bytes have been copied. */
    io_uring_buf_ring_add(self->br, addr, self->buf_size, (unsigned short)bid,
                          io_uring_buf_ring_mask(self->buf_count), 0);
    io_uring_buf_ring_advance(self->br, 1);
    if (data == NULL && cqe->res > 0) return NULL;
    if (data == NULL) Py_RETURN_NONE;
    return data;
}

static PyObject *Ring_run(Ring *self, PyObject *arg) {
    /* run(timeout): submit queued SQEs, wait up to timeout seconds (None: forever,
     * 0: not at all) for a completion, dispatch all ready completions. Returns how
     * many were dispatched. */
    double timeout = -1.0;
    if (arg != Py_None) {
        timeout = PyFloat_AsDouble(arg);
        if (timeout == -1.0 && PyErr_Occurred()) return NULL;
        if (timeout < 0) timeout = 0;
    }
    if (check_ring(self) < 0) return NULL;
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "ring.run() is not reentrant");
        return NULL;
    }
    int rc;
    if (timeout == 0) {
        if (self->defer)
            rc = io_uring_submit_and_get_events(&self->ring);
        else
            rc = io_uring_sq_ready(&self->ring) ? io_uring_submit(&self->ring) : 0;
    } else if (io_uring_cq_ready(&self->ring)) {
        rc = io_uring_sq_ready(&self->ring) ? io_uring_submit(&self->ring) : 0;
    } else {
        struct io_uring_cqe *cqe_ptr;
        Py_BEGIN_ALLOW_THREADS
        if (timeout < 0) {
            rc = io_uring_submit_and_wait(&self->ring, 1);
        } else {
            struct __kernel_timespec ts;
            ts.tv_sec = (long long)timeout;
            ts.tv_nsec = (long long)((timeout - (double)ts.tv_sec) * 1e9);
            rc = io_uring_submit_and_wait_timeout(&self->ring, &cqe_ptr, 1, &ts, NULL);
        }
        Py_END_ALLOW_THREADS
    }
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (rc == -EINTR && PyErr_CheckSignals() < 0) return NULL;

    struct io_uring_cqe copies[BATCH];
    Py_ssize_t total = 0;
    PyObject *fatal_type = NULL, *fatal_value = NULL, *fatal_tb = NULL;
    self->running = 1;
    for (;;) {
        struct io_uring_cqe *cqes[BATCH];
        unsigned n = io_uring_peek_batch_cqe(&self->ring, cqes, BATCH);
        if (n == 0) break;
        for (unsigned i = 0; i < n; i++) copies[i] = *cqes[i];
        io_uring_cq_advance(&self->ring, n);
        for (unsigned i = 0; i < n; i++) {
            struct io_uring_cqe *cqe = &copies[i];
            op_t *op = io_uring_cqe_get_data(cqe);
            if (op == NULL) continue; /* a cancel request's own completion */
            int more = (cqe->flags & IORING_CQE_F_MORE) != 0;
            PyObject *data;
            if (op->kind == OP_RECV_MULTI) {
                data = recv_data(self, cqe);
            } else if (op->kind == OP_RECV && cqe->res >= 0) {
                data = op->keep;
                op->keep = NULL;
                if (cqe->res < PyBytes_GET_SIZE(data) && _PyBytes_Resize(&data, cqe->res) < 0)
                    data = NULL;
            } else {
                data = Py_None;
                Py_INCREF(data);
            }
            PyObject *result = NULL;
            if (data != NULL) {
                PyObject *res = PyLong_FromLong(cqe->res);
                if (res != NULL) {
                    PyObject *argv[3] = {res, data, more ? Py_True : Py_False};
                    result = PyObject_Vectorcall(op->target, argv, 3, NULL);
                    Py_DECREF(res);
                }
                Py_DECREF(data);
            }
            if (result == NULL) {
                if (PyErr_ExceptionMatches(PyExc_Exception)) {
                    PyErr_WriteUnraisable(op->target);
                } else if (fatal_type == NULL) {
                    PyErr_Fetch(&fatal_type, &fatal_value, &fatal_tb);
                } else {
                    PyErr_Clear();
                }
            } else {
                Py_DECREF(result);
            }
            if (!more) {
                unlink_op(self, op);
                free_op(op);
            }
            total++;
        }
        if (n < BATCH) break;
    }
    self->running = 0;
    if (fatal_type != NULL) {
        PyErr_Restore(fatal_type, fatal_value, fatal_tb);
        return NULL;
    }
    return PyLong_FromSsize_t(total);
}

static PyObject *Ring_submit(Ring *self, PyObject *Py_UNUSED(ignored)) {
    if (check_ring(self) < 0) return NULL;
    int rc = io_uring_submit(&self->ring);
    if (rc < 0) {
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(rc);
}

static PyObject *Ring_flush(Ring *self, PyObject *Py_UNUSED(ignored)) {
    /* Submit now and let the kernel finish deferred completion work (so a cancelled
     * op drops its file reference), without dispatching: completions stay queued for
     * run(). Safe to call from a target. */
    if (check_ring(self) < 0) return NULL;
    int rc = self->defer ? io_uring_submit_and_get_events(&self->ring) : io_uring_submit(&self->ring);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Ring_get_live(Ring *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->live);
}

static PyObject *Ring_get_closed(Ring *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(!self->ready);
}

static PyMethodDef Ring_methods[] = {
    {"close", (PyCFunction)Ring_close, METH_NOARGS, "Tear the ring down."},
    {"fileno", (PyCFunction)Ring_fileno, METH_NOARGS, "The ring's descriptor."},
    {"recv_multishot", (PyCFunction)Ring_recv_multishot, METH_VARARGS,
     "recv_multishot(fd, target) -> token: receive into provided buffers until cancelled."},
    {"recv", (PyCFunction)Ring_recv, METH_VARARGS,
     "recv(fd, nbytes, target) -> token: one receive into a new bytes."},
    {"send", (PyCFunction)Ring_send, METH_VARARGS, "send(fd, data: bytes, target) -> token."},
    {"sendmsg", (PyCFunction)Ring_sendmsg, METH_VARARGS,
     "sendmsg(fd, bufs: tuple[bytes, ...], target) -> token: one gathered send."},
    {"accept_multishot", (PyCFunction)Ring_accept_multishot, METH_VARARGS,
     "accept_multishot(fd, target) -> token: accepted descriptors (blocking, cloexec) until cancelled."},
    {"poll", (PyCFunction)Ring_poll, METH_VARARGS,
     "poll(fd, events, multishot, target) -> token."},
    {"close_fd", (PyCFunction)Ring_close_fd, METH_O,
     "close_fd(fd): close a descriptor in submission order (its completion is ignored)."},
    {"cancel", (PyCFunction)Ring_cancel, METH_O, "cancel(token): ask the kernel to cancel an op."},
    {"run", (PyCFunction)Ring_run, METH_O,
     "run(timeout) -> int: submit, wait (None forever, 0 not at all), dispatch completions."},
    {"submit", (PyCFunction)Ring_submit, METH_NOARGS, "Submit queued SQEs now."},
    {"flush", (PyCFunction)Ring_flush, METH_NOARGS,
     "Submit queued SQEs and run deferred completion work now, without dispatching."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Ring_getset[] = {
    {"live", (getter)Ring_get_live, NULL, "Operations not yet finished.", NULL},
    {"closed", (getter)Ring_get_closed, NULL, "Whether the ring is torn down.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "monolake.core.runtime._uring.Ring",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ring(entries=256, sqpoll_idle_ms=0, buf_count=128, buf_size=65536)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ring_init,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
};

static struct PyModuleDef uring_module = {
    PyModuleDef_HEAD_INIT, "monolake.core.runtime._uring", "io_uring ring for the monolake event loop.",
    -1, NULL,
};

PyMODINIT_FUNC PyInit__uring(void) {
    if (PyType_Ready(&RingType) < 0) return NULL;
    PyObject *m = PyModule_Create(&uring_module);
    if (!m) return NULL;
    Py_INCREF(&RingType);
    if (PyModule_AddObject(m, "Ring", (PyObject *)&RingType) < 0) {
        Py_DECREF(&RingType);
        Py_DECREF(m);
        return NULL;
    }
    static int hooked = 0;
    if (!hooked) {
        pthread_atfork(NULL, NULL, after_fork_child);
        hooked = 1;
    }
    PyModule_AddIntConstant(m, "POLLIN", POLLIN);
    PyModule_AddIntConstant(m, "POLLOUT", POLLOUT);
    return m;
}
