/*
 * torch_safetensors._C -- the CPython face of the C library.
 *
 * Plain C with no torch headers (ARCHITECTURE.md decision 6): tensors are
 * built in Python from the buffers and pointers this module hands out.
 *
 *   File     an open, validated file (path, descriptor or buffer). buffer(i)
 *            returns a zero-copy View that keeps the File -- and so the
 *            mapping -- alive, even after close(): the mapping goes away only
 *            when the last View (and so the last tensor built on it) dies.
 *   Writer   collects tensors (buffers or raw pointers) and writes them.
 *   SafetensorError  raised for every C status, with status, status_name,
 *            offset, tensor_name and sys_errno attributes.
 *
 * Every call that reads or writes file data releases the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The owned loads run on the copy engine: the C API's experimental tier. */
#define ST_EXPERIMENTAL_API
#include "safetensors.h"

/* Single-phase init: one interpreter, module-level state. */
static PyObject *g_error_type;     /* _C.SafetensorError */
static PyObject *g_error_factory;  /* optional: (status, errno) -> class */

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* Sets the Python error for a failed C call. err may be NULL. */
static PyObject *raise_status(st_status code, const st_error *err,
                              PyObject *filename) {
  const char *message = err != NULL ? err->message : st_status_str(code);
  const char *sname = st_status_name(code);
  int sys_errno = err != NULL ? err->sys_errno : 0;
  PyObject *offset = NULL, *tname = NULL, *text = NULL, *cls = NULL;
  PyObject *exc = NULL;

  if (message == NULL)
    message = st_status_str(code);
  if (err != NULL && err->offset != ST_NO_OFFSET)
    offset = PyLong_FromUnsignedLongLong((unsigned long long)err->offset);
  else
    offset = Py_NewRef(Py_None);
  if (offset == NULL)
    goto done;
  if (err != NULL && err->name_len > 0) {
    size_t n = strnlen(err->name, ST_ERROR_NAME_CAP);
    /* The record holds a truncated copy that may end inside a character. */
    tname = PyUnicode_DecodeUTF8(err->name, (Py_ssize_t)n, "replace");
  } else {
    tname = Py_NewRef(Py_None);
  }
  if (tname == NULL)
    goto done;

  text = PyUnicode_FromFormat("%s [%s, status %d]", message, sname, (int)code);
  if (text == NULL)
    goto done;
  if (offset != Py_None) {
    PyObject *t = PyUnicode_FromFormat("%U at byte offset %S", text, offset);
    Py_SETREF(text, t);
    if (text == NULL)
      goto done;
  }
  if (tname != Py_None) {
    PyObject *t = PyUnicode_FromFormat("%U, tensor %R", text, tname);
    Py_SETREF(text, t);
    if (text == NULL)
      goto done;
  }
  if (sys_errno != 0) {
    PyObject *t = PyUnicode_FromFormat("%U, errno %d (%s)", text, sys_errno,
                                       strerror(sys_errno));
    Py_SETREF(text, t);
    if (text == NULL)
      goto done;
  }
  if (filename != NULL && filename != Py_None) {
    PyObject *t = PyUnicode_FromFormat("%U, file %R", text, filename);
    Py_SETREF(text, t);
    if (text == NULL)
      goto done;
  }

  if (g_error_factory != NULL) {
    cls = PyObject_CallFunction(g_error_factory, "ii", (int)code, sys_errno);
    if (cls == NULL)
      goto done;
    if (!PyType_Check(cls) ||
        !PyObject_IsSubclass(cls, g_error_type)) {
      Py_SETREF(cls, Py_NewRef(g_error_type));
    }
  } else {
    cls = Py_NewRef(g_error_type);
  }
  exc = PyObject_CallOneArg(cls, text);
  if (exc == NULL)
    goto done;
  {
    PyObject *st = PyLong_FromLong((long)code);
    PyObject *nm = PyUnicode_FromString(sname);
    PyObject *en = PyLong_FromLong((long)sys_errno);
    int bad = st == NULL || nm == NULL || en == NULL ||
              PyObject_SetAttrString(exc, "status", st) < 0 ||
              PyObject_SetAttrString(exc, "status_name", nm) < 0 ||
              PyObject_SetAttrString(exc, "offset", offset) < 0 ||
              PyObject_SetAttrString(exc, "tensor_name", tname) < 0 ||
              PyObject_SetAttrString(exc, "sys_errno", en) < 0 ||
              PyObject_SetAttrString(exc, "filename",
                                     filename != NULL ? filename : Py_None) < 0;
    if (!bad && sys_errno != 0 &&
        PyObject_IsInstance(exc, PyExc_OSError) == 1) {
      bad = PyObject_SetAttrString(exc, "errno", en) < 0;
    }
    Py_XDECREF(st);
    Py_XDECREF(nm);
    Py_XDECREF(en);
    if (bad)
      goto done;
  }
  PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);

done:
  Py_XDECREF(exc);
  Py_XDECREF(cls);
  Py_XDECREF(text);
  Py_XDECREF(tname);
  Py_XDECREF(offset);
  return NULL;
}

/* A refusal decided in this module (no C record). name may be NULL. */
static PyObject *raise_simple(st_status code, const char *message,
                              const char *name) {
  st_error e;
  memset(&e, 0, sizeof e);
  e.code = code;
  e.message = message;
  e.offset = ST_NO_OFFSET;
  if (name != NULL) {
    size_t n = strlen(name);
    e.name_len = n;
    if (n >= ST_ERROR_NAME_CAP)
      n = ST_ERROR_NAME_CAP - 1;
    memcpy(e.name, name, n);
    e.name[n] = '\0';
  }
  return raise_status(code, &e, NULL);
}

/* ------------------------------------------------------------------------ */
/* Argument helpers                                                         */
/* ------------------------------------------------------------------------ */

/* An int as a raw address. */
static int as_pointer(PyObject *o, void **out) {
  void *p = PyLong_AsVoidPtr(o);
  if (p == NULL && PyErr_Occurred())
    return -1;
  *out = p;
  return 0;
}

static int as_int(PyObject *o, int *out) {
  long v = PyLong_AsLong(o);
  if (v == -1 && PyErr_Occurred())
    return -1;
  if (v < INT_MIN || v > INT_MAX) {
    PyErr_SetString(PyExc_OverflowError, "value out of int range");
    return -1;
  }
  *out = (int)v;
  return 0;
}

static int as_u64(PyObject *o, uint64_t *out, const char *what) {
  unsigned long long v;
  if (!PyLong_Check(o)) {
    PyErr_Format(PyExc_TypeError, "%s must be an int", what);
    return -1;
  }
  v = PyLong_AsUnsignedLongLong(o);
  if (v == (unsigned long long)-1 && PyErr_Occurred()) {
    if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
      PyErr_Clear();
      PyErr_Format(PyExc_ValueError, "%s must be in [0, 2**64)", what);
    }
    return -1;
  }
  *out = (uint64_t)v;
  return 0;
}

/* Slice ranges: a sequence of (start, stop, step); None stop = to the end,
 * None start = 0, None step = 1. *out is PyMem-allocated (caller frees). */
static int parse_ranges(PyObject *seq, st_range **out, size_t *n) {
  PyObject *fast = PySequence_Fast(seq, "ranges must be a sequence");
  Py_ssize_t len, k;
  st_range *r;
  if (fast == NULL)
    return -1;
  len = PySequence_Fast_GET_SIZE(fast);
  r = PyMem_Calloc(len > 0 ? (size_t)len : 1, sizeof *r);
  if (r == NULL) {
    Py_DECREF(fast);
    PyErr_NoMemory();
    return -1;
  }
  for (k = 0; k < len; k++) {
    PyObject *item = PySequence_Fast_GET_ITEM(fast, k);
    PyObject *a = NULL, *b = NULL, *c = NULL;
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
      PyErr_SetString(PyExc_TypeError,
                      "each range must be a (start, stop, step) tuple");
      goto fail;
    }
    a = PyTuple_GET_ITEM(item, 0);
    b = PyTuple_GET_ITEM(item, 1);
    c = PyTuple_GET_ITEM(item, 2);
    r[k].start = a == Py_None ? 0 : (int64_t)PyLong_AsLongLong(a);
    if (PyErr_Occurred())
      goto fail;
    r[k].stop = b == Py_None ? ST_SLICE_END : (int64_t)PyLong_AsLongLong(b);
    if (PyErr_Occurred())
      goto fail;
    r[k].step = c == Py_None ? 1 : (int64_t)PyLong_AsLongLong(c);
    if (PyErr_Occurred())
      goto fail;
  }
  Py_DECREF(fast);
  *out = r;
  *n = (size_t)len;
  return 0;
fail:
  Py_DECREF(fast);
  PyMem_Free(r);
  return -1;
}

/* A writable destination: an int address (then nbytes is required) or a
 * writable, contiguous buffer. */
typedef struct dest {
  void *ptr;
  size_t size;
  Py_buffer view;
  int has_view;
} dest;

static int dest_get(PyObject *obj, PyObject *nbytes, dest *d) {
  memset(d, 0, sizeof *d);
  if (PyLong_Check(obj)) {
    uint64_t n;
    if (nbytes == NULL || nbytes == Py_None) {
      PyErr_SetString(PyExc_TypeError,
                      "nbytes is required with a raw address");
      return -1;
    }
    if (as_pointer(obj, &d->ptr) < 0 || as_u64(nbytes, &n, "nbytes") < 0)
      return -1;
    if (n > (uint64_t)PY_SSIZE_T_MAX) {
      PyErr_SetString(PyExc_ValueError, "nbytes too large");
      return -1;
    }
    if (d->ptr == NULL && n > 0) {
      PyErr_SetString(PyExc_ValueError, "NULL destination");
      return -1;
    }
    d->size = (size_t)n;
    return 0;
  }
  if (PyObject_GetBuffer(obj, &d->view, PyBUF_WRITABLE) < 0)
    return -1;
  d->has_view = 1;
  d->ptr = d->view.buf;
  d->size = (size_t)d->view.len;
  if (nbytes != NULL && nbytes != Py_None) {
    uint64_t n;
    if (as_u64(nbytes, &n, "nbytes") < 0) {
      PyBuffer_Release(&d->view);
      return -1;
    }
    if (n < d->size)
      d->size = (size_t)n;
  }
  return 0;
}

static void dest_release(dest *d) {
  if (d->has_view)
    PyBuffer_Release(&d->view);
  d->has_view = 0;
}

/* ------------------------------------------------------------------------ */
/* File                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct FileObject {
  PyObject_HEAD
  st_file *file;
  int closed;          /* close() was called */
  Py_ssize_t users;    /* live Views + calls running without the GIL */
  int writable;        /* views may be written (private mapping) */
  int has_source;
  Py_buffer source;    /* the caller's memory for buffer-backed files */
  PyObject *name;      /* path for messages, or None */
} FileObject;

static PyTypeObject File_Type;
static PyTypeObject View_Type;

/* Releases the handle once it is closed and nobody uses it. */
static void file_release(FileObject *self) {
  if (self->file != NULL) {
    st_file *f = self->file;
    self->file = NULL;
    st_close(f);
  }
  if (self->has_source) {
    PyBuffer_Release(&self->source);
    self->has_source = 0;
  }
}

static void file_maybe_release(FileObject *self) {
  if (self->closed && self->users == 0)
    file_release(self);
}

static int file_check(FileObject *self) {
  if (self->closed || self->file == NULL) {
    raise_simple(ST_ERR_INVALID_ARGUMENT, "file is closed", NULL);
    return -1;
  }
  return 0;
}

static int file_index(FileObject *self, PyObject *arg, size_t *index) {
  Py_ssize_t i;
  size_t n;
  if (file_check(self) < 0)
    return -1;
  n = st_tensor_count(self->file);
  if (PyUnicode_Check(arg)) {
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &len);
    st_status rc;
    if (s == NULL)
      return -1;
    rc = st_tensor_find(self->file, s, (size_t)len, index);
    if (rc != ST_OK) {
      PyErr_SetObject(PyExc_KeyError, arg);
      return -1;
    }
    return 0;
  }
  i = PyNumber_AsSsize_t(arg, PyExc_IndexError);
  if (i == -1 && PyErr_Occurred())
    return -1;
  if (i < 0)
    i += (Py_ssize_t)n;
  if (i < 0 || (size_t)i >= n) {
    PyErr_SetString(PyExc_IndexError, "tensor index out of range");
    return -1;
  }
  *index = (size_t)i;
  return 0;
}

static int File_init(FileObject *self, PyObject *args, PyObject *kwds) {
  static char *kwlist[] = {"source", "backend", "writable", "populate",
                           "allow_trailing_bytes", NULL};
  PyObject *source;
  const char *backend = "mmap";
  int writable = 0, populate = 0, trailing = 0;
  st_open_options opts;
  st_error err;
  st_status rc;
  st_file *f = NULL;

  if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|sppp", kwlist, &source,
                                   &backend, &writable, &populate, &trailing))
    return -1;
  if (self->file != NULL || self->has_source) {
    PyErr_SetString(PyExc_RuntimeError, "File already initialised");
    return -1;
  }
  st_open_options_init(&opts);
  if (strcmp(backend, "mmap") == 0) {
    opts.backend = ST_BACKEND_MMAP;
  } else if (strcmp(backend, "pread") == 0) {
    opts.backend = ST_BACKEND_PREAD;
  } else {
    PyErr_Format(PyExc_ValueError,
                 "backend must be \"mmap\" or \"pread\", not \"%s\"",
                 backend);
    return -1;
  }
  if (writable)
    opts.flags |= ST_OPEN_MAP_PRIVATE_WRITABLE;
  if (populate)
    opts.flags |= ST_OPEN_MAP_POPULATE;
  if (trailing)
    opts.flags |= ST_OPEN_ALLOW_TRAILING_BYTES;
  memset(&err, 0, sizeof err);

  if (PyLong_Check(source)) {
    int fd;
    if (as_int(source, &fd) < 0)
      return -1;
    Py_BEGIN_ALLOW_THREADS
    rc = st_open_fd(fd, &opts, &f, &err);
    Py_END_ALLOW_THREADS
    Py_XSETREF(self->name, Py_NewRef(Py_None));
    if (rc != ST_OK) {
      raise_status(rc, &err, NULL);
      return -1;
    }
  } else if (PyUnicode_Check(source) ||
             PyObject_HasAttrString(source, "__fspath__")) {
    PyObject *path = NULL, *decoded = NULL;
    if (!PyUnicode_FSConverter(source, &path))
      return -1;
    decoded = PyOS_FSPath(source);
    Py_XSETREF(self->name, decoded != NULL ? decoded : Py_NewRef(Py_None));
    if (decoded == NULL)
      PyErr_Clear();
    {
      const char *p = PyBytes_AS_STRING(path);
      Py_BEGIN_ALLOW_THREADS
      rc = st_open(p, &opts, &f, &err);
      Py_END_ALLOW_THREADS
    }
    Py_DECREF(path);
    if (rc != ST_OK) {
      raise_status(rc, &err, self->name);
      return -1;
    }
  } else if (PyObject_CheckBuffer(source)) {
    int flags = writable ? PyBUF_WRITABLE : PyBUF_SIMPLE;
    if (PyObject_GetBuffer(source, &self->source, flags) < 0) {
      if (!writable)
        return -1;
      /* A read-only buffer: serve read-only views. */
      PyErr_Clear();
      writable = 0;
      if (PyObject_GetBuffer(source, &self->source, PyBUF_SIMPLE) < 0)
        return -1;
    }
    self->has_source = 1;
    Py_XSETREF(self->name, Py_NewRef(Py_None));
    {
      const void *p = self->source.buf;
      size_t n = (size_t)self->source.len;
      Py_BEGIN_ALLOW_THREADS
      rc = st_open_memory(p, n, &opts, &f, &err);
      Py_END_ALLOW_THREADS
    }
    if (rc != ST_OK) {
      PyBuffer_Release(&self->source);
      self->has_source = 0;
      raise_status(rc, &err, NULL);
      return -1;
    }
  } else {
    PyErr_Format(PyExc_TypeError,
                 "source must be a path, a file descriptor or a buffer, "
                 "not %.100s",
                 Py_TYPE(source)->tp_name);
    return -1;
  }
  self->file = f;
  self->closed = 0;
  self->users = 0;
  self->writable = writable;
  return 0;
}

static void File_dealloc(FileObject *self) {
  file_release(self);
  Py_XDECREF(self->name);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *File_close(FileObject *self, PyObject *Py_UNUSED(ignored)) {
  self->closed = 1;
  file_maybe_release(self);
  Py_RETURN_NONE;
}

static PyObject *File_enter(FileObject *self, PyObject *Py_UNUSED(ignored)) {
  if (file_check(self) < 0)
    return NULL;
  return Py_NewRef(self);
}

static PyObject *File_exit(FileObject *self, PyObject *Py_UNUSED(args)) {
  self->closed = 1;
  file_maybe_release(self);
  Py_RETURN_FALSE;
}

static PyObject *shape_tuple(const uint64_t *shape, size_t rank) {
  PyObject *t = PyTuple_New((Py_ssize_t)rank);
  size_t d;
  if (t == NULL)
    return NULL;
  for (d = 0; d < rank; d++) {
    PyObject *v = PyLong_FromUnsignedLongLong((unsigned long long)shape[d]);
    if (v == NULL) {
      Py_DECREF(t);
      return NULL;
    }
    PyTuple_SET_ITEM(t, (Py_ssize_t)d, v);
  }
  /* Only ints inside: no cycle can pass through it. Untracked now rather
   * than at the collector's next pass, so that listing a file of many
   * tensors adds nothing to the survivors the cyclic GC counts (they decide
   * when it runs a full collection: ~80 ms in a process holding torch). */
  PyObject_GC_UnTrack(t);
  return t;
}

/* The dtype names as str objects, made once (22 of them, module-lifetime). */
static PyObject *dtype_str(st_dtype dtype) {
  static PyObject *cache[64];
  unsigned k = (unsigned)dtype;
  if (k >= 64)
    return PyUnicode_FromString(st_dtype_name(dtype));
  if (cache[k] == NULL) {
    cache[k] = PyUnicode_InternFromString(st_dtype_name(dtype));
    if (cache[k] == NULL)
      return NULL;
  }
  return Py_NewRef(cache[k]);
}

/* torch's names of the dtypes, as str objects made once (module-lifetime). */
static PyObject *torch_str(st_dtype dtype) {
  static PyObject *cache[64];
  unsigned k = (unsigned)dtype;
  const char *name = st_dtype_torch_name(dtype);
  if (name == NULL) {
    PyErr_SetString(PyExc_ValueError, "dtype out of range");
    return NULL;
  }
  if (k >= 64)
    return PyUnicode_FromString(name);
  if (cache[k] == NULL) {
    cache[k] = PyUnicode_InternFromString(name);
    if (cache[k] == NULL)
      return NULL;
  }
  return Py_NewRef(cache[k]);
}

/* TensorInfo: a struct sequence whose first five fields are the positional
 * (name, dtype, shape, begin, end) of earlier versions; the view policy's
 * fields (st_tensor_torch_view) are attributes only. */
static PyTypeObject *g_info_type;

static PyStructSequence_Field info_fields[] = {
    {"name", "the tensor name"},
    {"dtype", "the file dtype name, e.g. \"F32\""},
    {"shape", "the file shape (a tuple of ints)"},
    {"begin", "first byte, relative to the data section"},
    {"end", "one past the last byte, relative to the data section"},
    {"torch_dtype", "torch's name of the dtype it loads as, e.g. \"float32\""},
    {"torch_shape", "the shape of the torch tensor (the view policy)"},
    {"flags", "VIEW_PACKED | VIEW_FLAT | VIEW_COPY"},
    {NULL, NULL}};

static PyStructSequence_Desc info_desc = {
    "torch_safetensors._C.TensorInfo",
    "One tensor of a file and its torch view (include/safetensors.h:\n"
    "st_tensor_info, st_tensor_torch_view). Unpacks as (name, dtype, shape,\n"
    "begin, end); torch_dtype, torch_shape and flags are attributes.",
    info_fields, 5};

static PyObject *torch_shape_of(PyObject *shape, const st_torch_view *v) {
  Py_ssize_t rank = PyTuple_GET_SIZE(shape), d;
  PyObject *t;
  if (v->flags & ST_VIEW_FLAT) {
    t = Py_BuildValue("(K)", (unsigned long long)v->numel);
    if (t != NULL)
      PyObject_GC_UnTrack(t); /* one int: as shape_tuple */
    return t;
  }
  if (!(v->flags & ST_VIEW_PACKED) || rank == 0)
    return Py_NewRef(shape);
  t = PyTuple_New(rank);
  if (t == NULL)
    return NULL;
  for (d = 0; d < rank; d++) {
    PyObject *x = d + 1 < rank ? Py_NewRef(PyTuple_GET_ITEM(shape, d))
                               : PyLong_FromUnsignedLongLong(
                                     (unsigned long long)v->last_dim);
    if (x == NULL) {
      Py_DECREF(t);
      return NULL;
    }
    PyTuple_SET_ITEM(t, d, x);
  }
  PyObject_GC_UnTrack(t);
  return t;
}

static PyObject *info_tuple(const st_file *file, size_t index,
                            const st_tensor_info *ti) {
  PyObject *name, *dtype, *shape, *begin, *end, *tdtype, *tshape, *flags;
  PyObject *t;
  st_torch_view view;
  st_status rc = st_tensor_torch_view(file, index, &view);
  if (rc != ST_OK)
    return raise_status(rc, NULL, NULL);
  name = PyUnicode_DecodeUTF8(ti->name, (Py_ssize_t)ti->name_len, "strict");
  dtype = name != NULL ? dtype_str(ti->dtype) : NULL;
  shape = dtype != NULL ? shape_tuple(ti->shape, ti->rank) : NULL;
  begin = shape != NULL
              ? PyLong_FromUnsignedLongLong((unsigned long long)ti->data_begin)
              : NULL;
  end = begin != NULL
            ? PyLong_FromUnsignedLongLong((unsigned long long)ti->data_end)
            : NULL;
  tdtype = end != NULL ? torch_str(ti->dtype) : NULL;
  tshape = tdtype != NULL ? torch_shape_of(shape, &view) : NULL;
  flags = tshape != NULL ? PyLong_FromUnsignedLong(view.flags) : NULL;
  t = flags != NULL ? PyStructSequence_New(g_info_type) : NULL;
  if (t == NULL) {
    Py_XDECREF(name);
    Py_XDECREF(dtype);
    Py_XDECREF(shape);
    Py_XDECREF(begin);
    Py_XDECREF(end);
    Py_XDECREF(tdtype);
    Py_XDECREF(tshape);
    Py_XDECREF(flags);
    return NULL;
  }
  PyStructSequence_SET_ITEM(t, 0, name);
  PyStructSequence_SET_ITEM(t, 1, dtype);
  PyStructSequence_SET_ITEM(t, 2, shape);
  PyStructSequence_SET_ITEM(t, 3, begin);
  PyStructSequence_SET_ITEM(t, 4, end);
  PyStructSequence_SET_ITEM(t, 5, tdtype);
  PyStructSequence_SET_ITEM(t, 6, tshape);
  PyStructSequence_SET_ITEM(t, 7, flags);
  PyObject_GC_UnTrack(t); /* str, ints and untracked tuples: as above */
  return t;
}

static PyObject *File_tensors(FileObject *self, PyObject *Py_UNUSED(ignored)) {
  size_t n, i;
  PyObject *list;
  if (file_check(self) < 0)
    return NULL;
  n = st_tensor_count(self->file);
  list = PyList_New((Py_ssize_t)n);
  if (list == NULL)
    return NULL;
  for (i = 0; i < n; i++) {
    st_tensor_info ti;
    PyObject *t;
    st_status rc = st_tensor_get(self->file, i, &ti);
    if (rc != ST_OK) {
      Py_DECREF(list);
      return raise_status(rc, NULL, self->name);
    }
    t = info_tuple(self->file, i, &ti);
    if (t == NULL) {
      Py_DECREF(list);
      return NULL;
    }
    PyList_SET_ITEM(list, (Py_ssize_t)i, t);
  }
  return list;
}

/* names(sorted=True): the tensor names in name order (byte-wise, which is
 * code-point order for UTF-8, i.e. Python's sorted()) or in file order;
 * built here so that listing a file costs no per-tensor Python work. */
static PyObject *File_names(FileObject *self, PyObject *args, PyObject *kwds) {
  static char *kwlist[] = {"sorted", NULL};
  int by_name = 1;
  size_t n, k;
  PyObject *list;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p", kwlist, &by_name))
    return NULL;
  if (file_check(self) < 0)
    return NULL;
  n = st_tensor_count(self->file);
  list = PyList_New((Py_ssize_t)n);
  if (list == NULL)
    return NULL;
  for (k = 0; k < n; k++) {
    st_tensor_info ti;
    size_t i = k;
    PyObject *name;
    st_status rc = by_name ? st_tensor_name_order(self->file, k, &i) : ST_OK;
    if (rc == ST_OK)
      rc = st_tensor_get(self->file, i, &ti);
    if (rc != ST_OK) {
      Py_DECREF(list);
      return raise_status(rc, NULL, self->name);
    }
    name = PyUnicode_DecodeUTF8(ti.name, (Py_ssize_t)ti.name_len, "strict");
    if (name == NULL) {
      Py_DECREF(list);
      return NULL;
    }
    PyList_SET_ITEM(list, (Py_ssize_t)k, name);
  }
  return list;
}

static PyObject *File_info(FileObject *self, PyObject *arg) {
  size_t i;
  st_tensor_info ti;
  st_status rc;
  if (file_index(self, arg, &i) < 0)
    return NULL;
  rc = st_tensor_get(self->file, i, &ti);
  if (rc != ST_OK)
    return raise_status(rc, NULL, self->name);
  return info_tuple(self->file, i, &ti);
}

static PyObject *File_index(FileObject *self, PyObject *arg) {
  size_t i;
  if (!PyUnicode_Check(arg)) {
    PyErr_SetString(PyExc_TypeError, "name must be a str");
    return NULL;
  }
  if (file_index(self, arg, &i) < 0)
    return NULL;
  return PyLong_FromSize_t(i);
}

static PyObject *File_metadata(FileObject *self, PyObject *Py_UNUSED(ignored)) {
  size_t n, k;
  PyObject *d;
  if (file_check(self) < 0)
    return NULL;
  n = st_metadata_count(self->file);
  if (n == 0)
    Py_RETURN_NONE;
  d = PyDict_New();
  if (d == NULL)
    return NULL;
  for (k = 0; k < n; k++) {
    const char *key, *value;
    size_t klen, vlen;
    PyObject *pk, *pv;
    int bad;
    st_status rc = st_metadata_get(self->file, k, &key, &klen, &value, &vlen);
    if (rc != ST_OK) {
      Py_DECREF(d);
      return raise_status(rc, NULL, self->name);
    }
    pk = PyUnicode_DecodeUTF8(key, (Py_ssize_t)klen, "strict");
    pv = PyUnicode_DecodeUTF8(value, (Py_ssize_t)vlen, "strict");
    bad = pk == NULL || pv == NULL || PyDict_SetItem(d, pk, pv) < 0;
    Py_XDECREF(pk);
    Py_XDECREF(pv);
    if (bad) {
      Py_DECREF(d);
      return NULL;
    }
  }
  return d;
}

static PyObject *File_len_method(FileObject *self,
                                 PyObject *Py_UNUSED(ignored)) {
  if (file_check(self) < 0)
    return NULL;
  return PyLong_FromSize_t(st_tensor_count(self->file));
}

static Py_ssize_t File_len(FileObject *self) {
  if (file_check(self) < 0)
    return -1;
  return (Py_ssize_t)st_tensor_count(self->file);
}

typedef struct ViewObject {
  PyObject_HEAD
  FileObject *owner;
  char *data;
  Py_ssize_t len;
  int readonly;
} ViewObject;

static PyObject *File_buffer(FileObject *self, PyObject *arg) {
  size_t i;
  const void *data = NULL;
  st_tensor_info ti;
  st_status rc;
  ViewObject *v;
  uint64_t len;
  if (file_index(self, arg, &i) < 0)
    return NULL;
  rc = st_tensor_get(self->file, i, &ti);
  if (rc != ST_OK)
    return raise_status(rc, NULL, self->name);
  rc = st_tensor_data(self->file, i, &data);
  if (rc != ST_OK)
    return raise_simple(rc,
                        rc == ST_ERR_UNSUPPORTED
                            ? "zero-copy views need the mmap backend"
                            : st_status_str(rc),
                        ti.name);
  len = ti.data_end - ti.data_begin;
  if (len > (uint64_t)PY_SSIZE_T_MAX)
    return raise_simple(ST_ERR_LIMIT, "tensor too large for this platform",
                        ti.name);
  v = PyObject_New(ViewObject, &View_Type);
  if (v == NULL)
    return NULL;
  v->owner = (FileObject *)Py_NewRef(self);
  v->data = (char *)(uintptr_t)data;
  v->len = (Py_ssize_t)len;
  v->readonly = !self->writable;
  self->users++;
  return (PyObject *)v;
}

static PyObject *File_read_into(FileObject *self, PyObject *args,
                                PyObject *kwds) {
  static char *kwlist[] = {"index", "dest", "nbytes", NULL};
  PyObject *iobj, *dobj, *nobj = NULL;
  size_t i;
  dest d;
  st_error err;
  st_status rc;
  st_file *f;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O", kwlist, &iobj, &dobj,
                                   &nobj))
    return NULL;
  if (file_index(self, iobj, &i) < 0)
    return NULL;
  if (dest_get(dobj, nobj, &d) < 0)
    return NULL;
  memset(&err, 0, sizeof err);
  f = self->file;
  self->users++;
  Py_BEGIN_ALLOW_THREADS
  rc = st_tensor_read(f, i, d.ptr, d.size, &err);
  Py_END_ALLOW_THREADS
  self->users--;
  dest_release(&d);
  file_maybe_release(self);
  if (rc != ST_OK)
    return raise_status(rc, &err, self->name);
  Py_RETURN_NONE;
}

static PyObject *File_read_slice_into(FileObject *self, PyObject *args,
                                      PyObject *kwds) {
  static char *kwlist[] = {"index", "ranges", "dest", "nbytes", NULL};
  PyObject *iobj, *robj, *dobj, *nobj = NULL;
  size_t i, nr = 0;
  st_range *ranges = NULL;
  dest d;
  st_error err;
  st_status rc;
  st_file *f;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|O", kwlist, &iobj, &robj,
                                   &dobj, &nobj))
    return NULL;
  if (file_index(self, iobj, &i) < 0)
    return NULL;
  if (parse_ranges(robj, &ranges, &nr) < 0)
    return NULL;
  if (dest_get(dobj, nobj, &d) < 0) {
    PyMem_Free(ranges);
    return NULL;
  }
  memset(&err, 0, sizeof err);
  f = self->file;
  self->users++;
  Py_BEGIN_ALLOW_THREADS
  rc = st_tensor_read_slice(f, i, ranges, nr, d.ptr, d.size, &err);
  Py_END_ALLOW_THREADS
  self->users--;
  dest_release(&d);
  PyMem_Free(ranges);
  file_maybe_release(self);
  if (rc != ST_OK)
    return raise_status(rc, &err, self->name);
  Py_RETURN_NONE;
}

static PyObject *File_slice_shape(FileObject *self, PyObject *args) {
  PyObject *iobj, *robj, *shape;
  size_t i, nr = 0;
  st_range *ranges = NULL;
  st_tensor_info ti;
  uint64_t *dims;
  uint64_t nbytes = 0;
  st_status rc;
  if (!PyArg_ParseTuple(args, "OO", &iobj, &robj))
    return NULL;
  if (file_index(self, iobj, &i) < 0)
    return NULL;
  rc = st_tensor_get(self->file, i, &ti);
  if (rc != ST_OK)
    return raise_status(rc, NULL, self->name);
  if (parse_ranges(robj, &ranges, &nr) < 0)
    return NULL;
  dims = PyMem_Calloc(ti.rank > 0 ? ti.rank : 1, sizeof *dims);
  if (dims == NULL) {
    PyMem_Free(ranges);
    return PyErr_NoMemory();
  }
  rc = st_slice_shape(self->file, i, ranges, nr, dims, &nbytes);
  PyMem_Free(ranges);
  if (rc != ST_OK) {
    PyMem_Free(dims);
    return raise_simple(rc, st_status_str(rc), ti.name);
  }
  shape = shape_tuple(dims, ti.rank);
  PyMem_Free(dims);
  if (shape == NULL)
    return NULL;
  return Py_BuildValue("(NK)", shape, (unsigned long long)nbytes);
}

/* Reads many whole tensors at once through the copy engine: items is a
 * sequence of (index, address, nbytes). threads 0: every CPU. */
/* Items are (index, address, nbytes) for whole tensors, or (index, address,
 * nbytes, ranges) for slices; all run as one plan of the copy engine.
 * Returns the engine's counters. */
static PyObject *File_read_many(FileObject *self, PyObject *args,
                                PyObject *kwds) {
  static char *kwlist[] = {"items", "threads", "flags", NULL};
  PyObject *items, *fast;
  unsigned int threads = 0, flags = 0;
  st_plan *plan = NULL;
  st_exec_options opts;
  st_exec_stats stats;
  st_error err;
  st_status rc;
  Py_ssize_t k, n;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|II", kwlist, &items,
                                   &threads, &flags))
    return NULL;
  if ((flags & ~(unsigned)(ST_EXEC_NO_PREFAULT | ST_EXEC_DIRECT |
                           ST_EXEC_HUGEPAGES)) != 0) {
    PyErr_Format(PyExc_ValueError, "unknown engine flags 0x%x", flags);
    return NULL;
  }
  if (file_check(self) < 0)
    return NULL;
  fast = PySequence_Fast(items, "items must be a sequence");
  if (fast == NULL)
    return NULL;
  memset(&err, 0, sizeof err);
  rc = st_plan_new(self->file, NULL, &plan, &err);
  if (rc != ST_OK) {
    Py_DECREF(fast);
    return raise_status(rc, &err, self->name);
  }
  n = PySequence_Fast_GET_SIZE(fast);
  for (k = 0; k < n; k++) {
    PyObject *item = PySequence_Fast_GET_ITEM(fast, k);
    size_t i, nr = 0;
    void *ptr;
    uint64_t nb;
    st_range *ranges = NULL;
    if (!PyTuple_Check(item) ||
        (PyTuple_GET_SIZE(item) != 3 && PyTuple_GET_SIZE(item) != 4)) {
      PyErr_SetString(PyExc_TypeError,
                      "each item must be (index, address, nbytes[, ranges])");
      goto fail;
    }
    if (file_index(self, PyTuple_GET_ITEM(item, 0), &i) < 0 ||
        as_pointer(PyTuple_GET_ITEM(item, 1), &ptr) < 0 ||
        as_u64(PyTuple_GET_ITEM(item, 2), &nb, "nbytes") < 0)
      goto fail;
    if (nb > (uint64_t)SIZE_MAX) {
      PyErr_SetString(PyExc_ValueError, "nbytes too large");
      goto fail;
    }
    if (PyTuple_GET_SIZE(item) == 4) {
      if (parse_ranges(PyTuple_GET_ITEM(item, 3), &ranges, &nr) < 0)
        goto fail;
      rc = st_plan_add_slice(plan, i, ranges, nr, ptr, (size_t)nb, &err);
      PyMem_Free(ranges);
    } else {
      rc = st_plan_add_tensor(plan, i, ptr, (size_t)nb, &err);
    }
    if (rc != ST_OK) {
      raise_status(rc, &err, self->name);
      goto fail;
    }
  }
  Py_DECREF(fast);
  st_exec_options_init(&opts);
  opts.threads = threads;
  opts.flags = flags;
  self->users++;
  Py_BEGIN_ALLOW_THREADS
  rc = st_plan_execute(plan, &opts, &stats, &err);
  st_plan_free(plan);
  Py_END_ALLOW_THREADS
  self->users--;
  file_maybe_release(self);
  if (rc != ST_OK)
    return raise_status(rc, &err, self->name);
  return Py_BuildValue("{s:K,s:K,s:K,s:I}", "bytes_copied",
                       (unsigned long long)stats.bytes_copied, "bytes_read",
                       (unsigned long long)stats.bytes_read, "chunks",
                       (unsigned long long)stats.chunks, "threads_used",
                       (unsigned int)stats.threads_used);
fail:
  Py_DECREF(fast);
  st_plan_free(plan);
  return NULL;
}

static PyObject *File_header(FileObject *self, PyObject *Py_UNUSED(ign)) {
  uint64_t n;
  if (file_check(self) < 0)
    return NULL;
  n = st_header_size(self->file);
  if (n > (uint64_t)PY_SSIZE_T_MAX)
    return PyErr_NoMemory();
  return PyBytes_FromStringAndSize(st_header_bytes(self->file),
                                   (Py_ssize_t)n);
}

static PyObject *File_get_closed(FileObject *self, void *Py_UNUSED(c)) {
  return PyBool_FromLong(self->closed);
}

static PyObject *File_get_released(FileObject *self, void *Py_UNUSED(c)) {
  return PyBool_FromLong(self->file == NULL);
}

static PyObject *File_get_backend(FileObject *self, void *Py_UNUSED(c)) {
  if (file_check(self) < 0)
    return NULL;
  return PyUnicode_FromString(st_file_backend(self->file) == ST_BACKEND_PREAD
                                  ? "pread"
                                  : "mmap");
}

static PyObject *File_get_writable(FileObject *self, void *Py_UNUSED(c)) {
  return PyBool_FromLong(self->writable);
}

static PyObject *File_get_header_size(FileObject *self, void *Py_UNUSED(c)) {
  if (file_check(self) < 0)
    return NULL;
  return PyLong_FromUnsignedLongLong(
      (unsigned long long)st_header_size(self->file));
}

static PyObject *File_get_data_offset(FileObject *self, void *Py_UNUSED(c)) {
  if (file_check(self) < 0)
    return NULL;
  return PyLong_FromUnsignedLongLong(
      (unsigned long long)st_data_offset(self->file));
}

static PyObject *File_get_data_size(FileObject *self, void *Py_UNUSED(c)) {
  if (file_check(self) < 0)
    return NULL;
  return PyLong_FromUnsignedLongLong(
      (unsigned long long)st_data_size(self->file));
}

static PyObject *File_get_users(FileObject *self, void *Py_UNUSED(c)) {
  return PyLong_FromSsize_t(self->users);
}

static PyObject *File_get_name(FileObject *self, void *Py_UNUSED(c)) {
  return Py_NewRef(self->name != NULL ? self->name : Py_None);
}

static PyMethodDef File_methods[] = {
    {"tensors", (PyCFunction)File_tensors, METH_NOARGS,
     "tensors() -> [TensorInfo] in file order."},
    {"names", (PyCFunction)(void (*)(void))File_names,
     METH_VARARGS | METH_KEYWORDS,
     "names(sorted=True) -> [str]: in name order, or in file order."},
    {"info", (PyCFunction)File_info, METH_O,
     "info(index_or_name) -> TensorInfo (name, dtype, shape, begin, end;\n"
     "torch_dtype, torch_shape, flags)."},
    {"index", (PyCFunction)File_index, METH_O,
     "index(name) -> file-order index; KeyError when absent."},
    {"metadata", (PyCFunction)File_metadata, METH_NOARGS,
     "metadata() -> dict[str, str], or None when the file has none."},
    {"header", (PyCFunction)File_header, METH_NOARGS,
     "header() -> the raw header bytes (N of them)."},
    {"count", (PyCFunction)File_len_method, METH_NOARGS,
     "count() -> number of tensors."},
    {"buffer", (PyCFunction)File_buffer, METH_O,
     "buffer(i) -> zero-copy View of tensor i's bytes (mmap backend or\n"
     "buffer source). The View keeps the mapping alive."},
    {"_read_into", (PyCFunction)(void (*)(void))File_read_into,
     METH_VARARGS | METH_KEYWORDS,
     "_read_into(i, dest, nbytes=None): copies tensor i into a writable\n"
     "buffer or a raw address (then nbytes is required). UNSAFE with an\n"
     "address: nothing checks that nbytes of writable memory live there;\n"
     "private to the package, which passes tensors it just allocated."},
    {"_read_slice_into", (PyCFunction)(void (*)(void))File_read_slice_into,
     METH_VARARGS | METH_KEYWORDS,
     "_read_slice_into(i, [(start, stop, step), ...], dest, nbytes=None).\n"
     "UNSAFE with a raw address, as _read_into."},
    {"slice_shape", (PyCFunction)File_slice_shape, METH_VARARGS,
     "slice_shape(i, ranges) -> (shape, nbytes)."},
    {"_read_many", (PyCFunction)(void (*)(void))File_read_many,
     METH_VARARGS | METH_KEYWORDS,
     "_read_many([(i, address, nbytes[, ranges]), ...], threads=0, flags=0):\n"
     "UNSAFE: writes through raw addresses that nothing checks; private.\n"
     "one plan of the copy engine for whole tensors and slices (flags:\n"
     "EXEC_NO_PREFAULT, EXEC_DIRECT, EXEC_HUGEPAGES); returns its\n"
     "counters {bytes_copied, bytes_read, chunks, threads_used}."},
    {"close", (PyCFunction)File_close, METH_NOARGS,
     "close(): no further calls; the mapping goes when the last View dies."},
    {"__enter__", (PyCFunction)File_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)File_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef File_getset[] = {
    {"closed", (getter)File_get_closed, NULL, "close() was called", NULL},
    {"released", (getter)File_get_released, NULL,
     "the C handle (and mapping) is gone", NULL},
    {"backend", (getter)File_get_backend, NULL, "\"mmap\" or \"pread\"", NULL},
    {"writable", (getter)File_get_writable, NULL, "views are writable", NULL},
    {"header_size", (getter)File_get_header_size, NULL, "N", NULL},
    {"data_offset", (getter)File_get_data_offset, NULL, "8 + N", NULL},
    {"data_size", (getter)File_get_data_size, NULL, "data bytes", NULL},
    {"users", (getter)File_get_users, NULL, "live views and calls", NULL},
    {"name", (getter)File_get_name, NULL, "the path, or None", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PySequenceMethods File_as_sequence = {
    .sq_length = (lenfunc)File_len,
};

static PyTypeObject File_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "torch_safetensors._C.File",
    .tp_basicsize = sizeof(FileObject),
    .tp_dealloc = (destructor)File_dealloc,
    .tp_as_sequence = &File_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "File(source, backend=\"mmap\", writable=False, populate=False,\n"
              "     allow_trailing_bytes=False)\n\n"
              "An open, fully validated safetensors file. source is a path,\n"
              "a file descriptor (duplicated) or a buffer (kept).",
    .tp_methods = File_methods,
    .tp_getset = File_getset,
    .tp_init = (initproc)File_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------------ */
/* View: the buffer exporter behind zero-copy tensors                       */
/* ------------------------------------------------------------------------ */

static void View_dealloc(ViewObject *self) {
  FileObject *owner = self->owner;
  self->owner = NULL;
  if (owner != NULL) {
    owner->users--;
    file_maybe_release(owner);
    Py_DECREF(owner);
  }
  PyObject_Free(self);
}

static int View_getbuffer(ViewObject *self, Py_buffer *view, int flags) {
  if ((flags & PyBUF_WRITABLE) && self->readonly) {
    PyErr_SetString(PyExc_BufferError, "read-only view");
    view->obj = NULL;
    return -1;
  }
  return PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->len,
                           self->readonly, flags);
}

static Py_ssize_t View_len(ViewObject *self) { return self->len; }

static PyObject *View_get_address(ViewObject *self, void *Py_UNUSED(c)) {
  return PyLong_FromVoidPtr(self->data);
}

static PyObject *View_get_readonly(ViewObject *self, void *Py_UNUSED(c)) {
  return PyBool_FromLong(self->readonly);
}

static PyGetSetDef View_getset[] = {
    {"address", (getter)View_get_address, NULL, "first byte", NULL},
    {"readonly", (getter)View_get_readonly, NULL, "not writable", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyBufferProcs View_as_buffer = {
    .bf_getbuffer = (getbufferproc)View_getbuffer,
    .bf_releasebuffer = NULL,
};

static PySequenceMethods View_as_sequence = {
    .sq_length = (lenfunc)View_len,
};

static PyTypeObject View_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "torch_safetensors._C.View",
    .tp_basicsize = sizeof(ViewObject),
    .tp_dealloc = (destructor)View_dealloc,
    .tp_as_sequence = &View_as_sequence,
    .tp_as_buffer = &View_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Zero-copy bytes of one tensor; keeps its File's mapping alive.",
    .tp_getset = View_getset,
};

/* ------------------------------------------------------------------------ */
/* Writer                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct WriterObject {
  PyObject_HEAD
  st_writer *w;
  PyObject *keep;      /* list of owners kept alive until the writer dies */
  Py_buffer *bufs;     /* buffers held for borrowed tensor bytes */
  size_t nbufs, capbufs;
  int busy;
} WriterObject;

static int Writer_init(WriterObject *self, PyObject *args, PyObject *kwds) {
  static char *kwlist[] = {NULL};
  st_error err;
  st_status rc;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
    return -1;
  if (self->w != NULL) {
    PyErr_SetString(PyExc_RuntimeError, "Writer already initialised");
    return -1;
  }
  memset(&err, 0, sizeof err);
  rc = st_writer_new(NULL, &self->w, &err);
  if (rc != ST_OK) {
    raise_status(rc, &err, NULL);
    return -1;
  }
  self->keep = PyList_New(0);
  if (self->keep == NULL)
    return -1;
  return 0;
}

static void Writer_dealloc(WriterObject *self) {
  size_t k;
  st_writer_free(self->w);
  self->w = NULL;
  for (k = 0; k < self->nbufs; k++)
    PyBuffer_Release(&self->bufs[k]);
  PyMem_Free(self->bufs);
  Py_XDECREF(self->keep);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static int writer_check(WriterObject *self) {
  if (self->w == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "Writer not initialised");
    return -1;
  }
  if (self->busy) {
    PyErr_SetString(PyExc_RuntimeError,
                    "Writer is in use by another thread");
    return -1;
  }
  return 0;
}

static PyObject *Writer_add_metadata(WriterObject *self, PyObject *args) {
  const char *k, *v;
  Py_ssize_t kl, vl;
  st_error err;
  st_status rc;
  if (!PyArg_ParseTuple(args, "s#s#", &k, &kl, &v, &vl))
    return NULL;
  if (writer_check(self) < 0)
    return NULL;
  memset(&err, 0, sizeof err);
  rc = st_writer_add_metadata(self->w, k, (size_t)kl, v, (size_t)vl, &err);
  if (rc != ST_OK)
    return raise_status(rc, &err, NULL);
  Py_RETURN_NONE;
}

static PyObject *Writer_declare_metadata(WriterObject *self,
                                         PyObject *Py_UNUSED(ignored)) {
  if (writer_check(self) < 0)
    return NULL;
  st_writer_declare_metadata(self->w, NULL);
  Py_RETURN_NONE;
}

static PyObject *Writer_add_tensor(WriterObject *self, PyObject *args,
                                   PyObject *kwds) {
  static char *kwlist[] = {"name", "dtype", "shape", "data", "nbytes",
                           "owner", NULL};
  const char *name, *dtname;
  Py_ssize_t nl, dl;
  PyObject *shape_obj, *data, *nobj = Py_None, *owner = Py_None, *fast;
  st_dtype dtype;
  uint64_t *shape = NULL;
  Py_ssize_t rank, d;
  const void *ptr = NULL;
  uint64_t nbytes = 0;
  Py_buffer buf;
  int has_buf = 0;
  st_error err;
  st_status rc;

  if (!PyArg_ParseTupleAndKeywords(args, kwds, "s#s#OO|OO", kwlist, &name,
                                   &nl, &dtname, &dl, &shape_obj, &data,
                                   &nobj, &owner))
    return NULL;
  if (writer_check(self) < 0)
    return NULL;
  if (st_dtype_from_name(dtname, (size_t)dl, &dtype) != ST_OK)
    return raise_simple(ST_ERR_INVALID_ARGUMENT, "unknown dtype", name);
  fast = PySequence_Fast(shape_obj, "shape must be a sequence of ints");
  if (fast == NULL)
    return NULL;
  rank = PySequence_Fast_GET_SIZE(fast);
  if ((uint64_t)rank > UINT32_MAX) {
    Py_DECREF(fast);
    return raise_simple(ST_ERR_LIMIT, "too many dimensions", name);
  }
  shape = PyMem_Calloc(rank > 0 ? (size_t)rank : 1, sizeof *shape);
  if (shape == NULL) {
    Py_DECREF(fast);
    return PyErr_NoMemory();
  }
  for (d = 0; d < rank; d++) {
    if (as_u64(PySequence_Fast_GET_ITEM(fast, d), &shape[d], "dimension") <
        0) {
      Py_DECREF(fast);
      PyMem_Free(shape);
      return NULL;
    }
  }
  Py_DECREF(fast);

  if (PyLong_Check(data)) {
    void *p;
    if (nobj == Py_None) {
      PyMem_Free(shape);
      PyErr_SetString(PyExc_TypeError,
                      "nbytes is required with a raw address");
      return NULL;
    }
    if (as_pointer(data, &p) < 0 || as_u64(nobj, &nbytes, "nbytes") < 0) {
      PyMem_Free(shape);
      return NULL;
    }
    ptr = p;
  } else {
    if (PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE) < 0) {
      PyMem_Free(shape);
      return NULL;
    }
    has_buf = 1;
    ptr = buf.buf;
    nbytes = (uint64_t)buf.len;
    if (nobj != Py_None) {
      uint64_t n;
      if (as_u64(nobj, &n, "nbytes") < 0) {
        PyBuffer_Release(&buf);
        PyMem_Free(shape);
        return NULL;
      }
      if (n > nbytes) {
        PyBuffer_Release(&buf);
        PyMem_Free(shape);
        return raise_simple(ST_ERR_INVALID_TENSOR_INFO,
                            "nbytes exceeds the buffer", name);
      }
      nbytes = n;
    }
  }
  if (ptr == NULL && nbytes == 0)
    ptr = ""; /* the library wants a non-NULL pointer even for 0 bytes */
  if (ptr == NULL) {
    if (has_buf)
      PyBuffer_Release(&buf);
    PyMem_Free(shape);
    return raise_simple(ST_ERR_INVALID_ARGUMENT, "NULL data", name);
  }

  if (has_buf && self->nbufs == self->capbufs) {
    size_t cap = self->capbufs ? self->capbufs * 2 : 16;
    Py_buffer *nb = PyMem_Realloc(self->bufs, cap * sizeof *nb);
    if (nb == NULL) {
      PyBuffer_Release(&buf);
      PyMem_Free(shape);
      return PyErr_NoMemory();
    }
    self->bufs = nb;
    self->capbufs = cap;
  }
  memset(&err, 0, sizeof err);
  rc = st_writer_add_tensor(self->w, name, (size_t)nl, dtype, shape,
                            (uint32_t)rank, ptr, nbytes, &err);
  PyMem_Free(shape);
  if (rc != ST_OK) {
    if (has_buf)
      PyBuffer_Release(&buf);
    return raise_status(rc, &err, NULL);
  }
  if (has_buf)
    self->bufs[self->nbufs++] = buf;
  if (owner != Py_None && PyList_Append(self->keep, owner) < 0)
    return NULL;
  Py_RETURN_NONE;
}

static PyObject *Writer_size(WriterObject *self, PyObject *Py_UNUSED(ign)) {
  uint64_t size = 0;
  st_error err;
  st_status rc;
  if (writer_check(self) < 0)
    return NULL;
  memset(&err, 0, sizeof err);
  rc = st_writer_size(self->w, &size, &err);
  if (rc != ST_OK)
    return raise_status(rc, &err, NULL);
  return PyLong_FromUnsignedLongLong((unsigned long long)size);
}

static PyObject *Writer_write_path(WriterObject *self, PyObject *args,
                                   PyObject *kwds) {
  static char *kwlist[] = {"path", "fsync", "direct", NULL};
  PyObject *path = NULL, *pathobj;
  int fsync_ = 1, direct = 0;
  st_error err;
  st_status rc;
  st_writer *w;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|pp", kwlist, &pathobj,
                                   &fsync_, &direct))
    return NULL;
  if (writer_check(self) < 0)
    return NULL;
  if (!PyUnicode_FSConverter(pathobj, &path))
    return NULL;
  memset(&err, 0, sizeof err);
  w = self->w;
  self->busy = 1;
  {
    const char *p = PyBytes_AS_STRING(path);
    uint32_t flags = (fsync_ ? 0u : ST_WRITE_NO_FSYNC) |
                     (direct ? ST_WRITE_DIRECT : 0u);
    Py_BEGIN_ALLOW_THREADS
    rc = st_writer_write_path(w, p, flags, &err);
    Py_END_ALLOW_THREADS
  }
  self->busy = 0;
  if (rc != ST_OK) {
    PyObject *fs = PyOS_FSPath(pathobj);
    if (fs == NULL)
      PyErr_Clear();
    /* The record names the path it could not write; that is the file
     * (filename), not a tensor. */
    if (err.name_len == (size_t)PyBytes_GET_SIZE(path) &&
        strncmp(err.name, PyBytes_AS_STRING(path), ST_ERROR_NAME_CAP - 1) == 0) {
      err.name[0] = '\0';
      err.name_len = 0;
    }
    raise_status(rc, &err, fs);
    Py_XDECREF(fs);
    Py_DECREF(path);
    return NULL;
  }
  Py_DECREF(path);
  Py_RETURN_NONE;
}

static PyObject *Writer_write_fd(WriterObject *self, PyObject *arg) {
  int fd;
  st_error err;
  st_status rc;
  st_writer *w;
  if (as_int(arg, &fd) < 0)
    return NULL;
  if (writer_check(self) < 0)
    return NULL;
  memset(&err, 0, sizeof err);
  w = self->w;
  self->busy = 1;
  Py_BEGIN_ALLOW_THREADS
  rc = st_writer_write_fd(w, fd, &err);
  Py_END_ALLOW_THREADS
  self->busy = 0;
  if (rc != ST_OK)
    return raise_status(rc, &err, NULL);
  Py_RETURN_NONE;
}

static PyObject *Writer_to_bytes(WriterObject *self,
                                 PyObject *Py_UNUSED(ign)) {
  uint64_t size = 0;
  size_t written = 0;
  PyObject *out;
  st_error err;
  st_status rc;
  st_writer *w;
  char *dst;
  if (writer_check(self) < 0)
    return NULL;
  memset(&err, 0, sizeof err);
  rc = st_writer_size(self->w, &size, &err);
  if (rc != ST_OK)
    return raise_status(rc, &err, NULL);
  if (size > (uint64_t)PY_SSIZE_T_MAX)
    return PyErr_NoMemory();
  out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
  if (out == NULL)
    return NULL;
  dst = PyBytes_AS_STRING(out);
  w = self->w;
  self->busy = 1;
  Py_BEGIN_ALLOW_THREADS
  rc = st_writer_write_memory(w, dst, (size_t)size, &written, &err);
  Py_END_ALLOW_THREADS
  self->busy = 0;
  if (rc != ST_OK) {
    Py_DECREF(out);
    return raise_status(rc, &err, NULL);
  }
  if (written != (size_t)size) {
    Py_DECREF(out);
    return raise_simple(ST_ERR_IO, "writer produced fewer bytes than sized",
                        NULL);
  }
  return out;
}

static PyMethodDef Writer_methods[] = {
    {"add_metadata", (PyCFunction)Writer_add_metadata, METH_VARARGS,
     "add_metadata(key, value)"},
    {"declare_metadata", (PyCFunction)Writer_declare_metadata, METH_NOARGS,
     "declare_metadata(): write __metadata__ even when empty"},
    {"add_tensor", (PyCFunction)(void (*)(void))Writer_add_tensor,
     METH_VARARGS | METH_KEYWORDS,
     "add_tensor(name, dtype, shape, data, nbytes=None, owner=None)\n"
     "data is a buffer (held until the writer dies) or a raw address (then\n"
     "nbytes is required; owner, if given, is kept alive). UNSAFE with an\n"
     "address: the library reads nbytes there when it writes the file;\n"
     "pass the object that owns that memory as owner."},
    {"size", (PyCFunction)Writer_size, METH_NOARGS,
     "size() -> bytes the file will have."},
    {"write_path", (PyCFunction)(void (*)(void))Writer_write_path,
     METH_VARARGS | METH_KEYWORDS,
     "write_path(path, fsync=True, direct=False): durable, atomic write;\n"
     "direct: O_DIRECT (the page cache is bypassed)."},
    {"write_fd", (PyCFunction)Writer_write_fd, METH_O,
     "write_fd(fd): writes at the descriptor's position."},
    {"to_bytes", (PyCFunction)Writer_to_bytes, METH_NOARGS,
     "to_bytes() -> bytes"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject Writer_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "torch_safetensors._C.Writer",
    .tp_basicsize = sizeof(WriterObject),
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Writer(): collects tensors and writes a reference-exact file.",
    .tp_methods = Writer_methods,
    .tp_init = (initproc)Writer_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------------ */
/* Module                                                                   */
/* ------------------------------------------------------------------------ */

static PyObject *mod_set_error_factory(PyObject *Py_UNUSED(m), PyObject *arg) {
  if (arg != Py_None && !PyCallable_Check(arg)) {
    PyErr_SetString(PyExc_TypeError, "factory must be callable or None");
    return NULL;
  }
  Py_XSETREF(g_error_factory, arg == Py_None ? NULL : Py_NewRef(arg));
  Py_RETURN_NONE;
}

static PyObject *mod_raise_status(PyObject *Py_UNUSED(m), PyObject *args) {
  int code;
  const char *message;
  PyObject *name = Py_None;
  if (!PyArg_ParseTuple(args, "is|O", &code, &message, &name))
    return NULL;
  if (name != Py_None) {
    const char *n = PyUnicode_AsUTF8(name);
    if (n == NULL)
      return NULL;
    return raise_simple((st_status)code, message, n);
  }
  return raise_simple((st_status)code, message, NULL);
}

/* sniff(head, file_size) -> (bool, str | None): st_sniff, the C rule that
 * torch.load's dispatch and the open errors share. */
static PyObject *mod_sniff(PyObject *Py_UNUSED(m), PyObject *args) {
  Py_buffer head;
  unsigned long long file_size;
  if (!PyArg_ParseTuple(args, "y*K", &head, &file_size))
    return NULL;
  const char *what = NULL;
  int yes = st_sniff(head.buf, (size_t)head.len, (uint64_t)file_size, &what);
  PyBuffer_Release(&head);
  if (what == NULL)
    return Py_BuildValue("(OO)", yes ? Py_True : Py_False, Py_None);
  return Py_BuildValue("(Os)", yes ? Py_True : Py_False, what);
}

static PyObject *mod_status_name(PyObject *Py_UNUSED(m), PyObject *arg) {
  long code = PyLong_AsLong(arg);
  if (code == -1 && PyErr_Occurred())
    return NULL;
  return PyUnicode_FromString(st_status_name((st_status)code));
}

static PyObject *mod_dtype_bits(PyObject *Py_UNUSED(m), PyObject *arg) {
  Py_ssize_t len;
  const char *s = PyUnicode_AsUTF8AndSize(arg, &len);
  st_dtype d;
  if (s == NULL)
    return NULL;
  if (st_dtype_from_name(s, (size_t)len, &d) != ST_OK) {
    PyErr_SetObject(PyExc_KeyError, arg);
    return NULL;
  }
  return PyLong_FromUnsignedLong(st_dtype_bits(d));
}

/* torch_shape(dtype_name, shape): the view policy for any file shape (a
 * slice's): st_torch_view_of. */
static PyObject *mod_torch_shape(PyObject *Py_UNUSED(m), PyObject *args) {
  const char *name;
  Py_ssize_t len, rank, d;
  PyObject *shape, *seq, *out = NULL;
  uint64_t dims[ST_DEFAULT_MAX_RANK];
  st_dtype dtype;
  st_torch_view view;
  if (!PyArg_ParseTuple(args, "s#O:torch_shape", &name, &len, &shape))
    return NULL;
  if (st_dtype_from_name(name, (size_t)len, &dtype) != ST_OK) {
    PyErr_Format(PyExc_KeyError, "%s", name);
    return NULL;
  }
  seq = PySequence_Tuple(shape);
  if (seq == NULL)
    return NULL;
  rank = PyTuple_GET_SIZE(seq);
  if (rank > (Py_ssize_t)ST_DEFAULT_MAX_RANK) {
    PyErr_SetString(PyExc_ValueError, "torch_shape: too many dimensions");
    goto done;
  }
  for (d = 0; d < rank; d++) {
    dims[d] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(seq, d));
    if (PyErr_Occurred())
      goto done;
  }
  if (st_torch_view_of(dtype, dims, (uint32_t)rank, &view) != ST_OK) {
    PyErr_SetString(PyExc_ValueError,
                    "torch_shape: the shape overflows or is not whole bytes");
    goto done;
  }
  out = torch_shape_of(seq, &view);
done:
  Py_DECREF(seq);
  return out;
}

/* A producer that writes nothing: layout() asks the writer for its bytes
 * into untouched anonymous memory, so only the header's pages are touched. */
static int layout_producer(void *ctx, uint64_t offset, void *dst, size_t len) {
  (void)ctx;
  (void)offset;
  (void)dst;
  (void)len;
  return 0;
}

/* pwrite_runs(fd, address, run, offsets): writes len(offsets) runs of run
 * bytes that lie back to back in memory from address, run k at file offset
 * offsets[k] (a buffer of native int64, e.g. an int64 tensor's bytes). Runs
 * adjacent in the file too go in one call; EINTR and short writes continue.
 * The GIL is released for the whole loop: the per-row writes of a
 * column-sharded DCP save (distributed.py) cost one system call each, and
 * no Python object. Raises OSError with the failing call's errno. The
 * caller keeps the memory alive and owns fd. */
static PyObject *mod_pwrite_runs(PyObject *Py_UNUSED(m), PyObject *args) {
  int fd;
  unsigned long long address;
  Py_ssize_t run;
  Py_buffer offsets;
  if (!PyArg_ParseTuple(args, "iKny*", &fd, &address, &run, &offsets)) return NULL;
  if (run < 0 || offsets.len % (Py_ssize_t)sizeof(int64_t) != 0) {
    PyBuffer_Release(&offsets);
    PyErr_SetString(PyExc_ValueError, "pwrite_runs: run < 0, or offsets not whole int64s");
    return NULL;
  }
  const unsigned char *src = (const unsigned char *)(uintptr_t)address;
  const unsigned char *ob = offsets.buf;
  size_t n = (size_t)offsets.len / sizeof(int64_t), len = (size_t)run;
  int failed = 0;
  Py_BEGIN_ALLOW_THREADS
  size_t k = 0;
  while (k < n && failed == 0 && len > 0) {
    int64_t at, next;
    memcpy(&at, ob + k * sizeof at, sizeof at);
    size_t j = k + 1;
    for (; j < n; j++) {
      memcpy(&next, ob + j * sizeof next, sizeof next);
      if (next != at + (int64_t)((j - k) * len)) break;
    }
    const unsigned char *p = src + k * len;
    size_t left = (j - k) * len;
    off_t off = (off_t)at;
    while (left > 0) {
      ssize_t w = pwrite(fd, p, left < 0x40000000u ? left : 0x40000000u, off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        failed = w < 0 ? errno : EIO;
        break;
      }
      p += w;
      left -= (size_t)w;
      off += w;
    }
    k = j;
  }
  Py_END_ALLOW_THREADS
  PyBuffer_Release(&offsets);
  if (failed != 0) {
    errno = failed;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  Py_RETURN_NONE;
}

/* layout(tensors, metadata) -> (header, file_size): the exact first 8 + N
 * bytes st_writer would write for tensors, a sequence of (name, dtype,
 * shape), and metadata (None: no __metadata__; a dict, even empty: that
 * object), without any tensor data. The bytes come from the writer itself
 * (st_writer_write_memory into a MAP_NORESERVE anonymous mapping the size
 * of the file, whose data pages are never touched), so they are what
 * write_path writes for the same tensors. */
static PyObject *mod_layout(PyObject *Py_UNUSED(m), PyObject *args) {
  PyObject *tensors, *metadata, *fast = NULL, *out = NULL;
  st_writer *w = NULL;
  st_error err;
  st_status rc;
  uint64_t size = 0, hsize = 0;
  uint64_t *shape = NULL;
  void *map = MAP_FAILED;
  size_t written = 0;
  Py_ssize_t k, n;
  int d;
  if (!PyArg_ParseTuple(args, "OO:layout", &tensors, &metadata))
    return NULL;
  if (metadata != Py_None && !PyDict_Check(metadata)) {
    PyErr_SetString(PyExc_TypeError, "metadata must be a dict or None");
    return NULL;
  }
  memset(&err, 0, sizeof err);
  rc = st_writer_new(NULL, &w, &err);
  if (rc != ST_OK)
    return raise_status(rc, &err, NULL);
  if (metadata != Py_None) {
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    st_writer_declare_metadata(w, NULL);
    while (PyDict_Next(metadata, &pos, &key, &value)) {
      const char *ks, *vs;
      Py_ssize_t kl, vl;
      if (!PyUnicode_Check(key) || !PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "metadata keys and values must be str");
        goto done;
      }
      ks = PyUnicode_AsUTF8AndSize(key, &kl);
      vs = ks != NULL ? PyUnicode_AsUTF8AndSize(value, &vl) : NULL;
      if (vs == NULL)
        goto done;
      rc = st_writer_add_metadata(w, ks, (size_t)kl, vs, (size_t)vl, &err);
      if (rc != ST_OK) {
        raise_status(rc, &err, NULL);
        goto done;
      }
    }
  }
  fast = PySequence_Fast(tensors, "tensors must be a sequence");
  if (fast == NULL)
    goto done;
  n = PySequence_Fast_GET_SIZE(fast);
  shape = PyMem_Calloc(ST_DEFAULT_MAX_RANK, sizeof *shape);
  if (shape == NULL) {
    PyErr_NoMemory();
    goto done;
  }
  for (k = 0; k < n; k++) {
    PyObject *item = PySequence_Fast_GET_ITEM(fast, k), *dims;
    const char *name, *dtname;
    Py_ssize_t nl, dl, rank;
    st_dtype dtype;
    if (!PyArg_ParseTuple(item, "s#s#O", &name, &nl, &dtname, &dl, &dims)) {
      PyErr_SetString(PyExc_TypeError,
                      "each tensor must be (name, dtype, shape)");
      goto done;
    }
    if (st_dtype_from_name(dtname, (size_t)dl, &dtype) != ST_OK) {
      raise_simple(ST_ERR_INVALID_ARGUMENT, "unknown dtype", name);
      goto done;
    }
    dims = PySequence_Fast(dims, "shape must be a sequence of ints");
    if (dims == NULL)
      goto done;
    rank = PySequence_Fast_GET_SIZE(dims);
    if (rank > (Py_ssize_t)ST_DEFAULT_MAX_RANK) {
      Py_DECREF(dims);
      raise_simple(ST_ERR_LIMIT, "too many dimensions", name);
      goto done;
    }
    for (d = 0; d < (int)rank; d++) {
      if (as_u64(PySequence_Fast_GET_ITEM(dims, d), &shape[d], "dimension") <
          0) {
        Py_DECREF(dims);
        goto done;
      }
    }
    Py_DECREF(dims);
    rc = st_writer_add_tensor_cb(w, name, (size_t)nl, dtype, shape,
                                 (uint32_t)rank, layout_producer, NULL, &err);
    if (rc != ST_OK) {
      raise_status(rc, &err, NULL);
      goto done;
    }
  }
  rc = st_writer_size(w, &size, &err);
  if (rc != ST_OK) {
    raise_status(rc, &err, NULL);
    goto done;
  }
  if (size > (uint64_t)SIZE_MAX) {
    raise_simple(ST_ERR_VALIDATION_OVERFLOW, "the file does not fit memory",
                 NULL);
    goto done;
  }
  map = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (map == MAP_FAILED) {
    PyErr_SetFromErrno(PyExc_OSError);
    goto done;
  }
  Py_BEGIN_ALLOW_THREADS
  rc = st_writer_write_memory(w, map, (size_t)size, &written, &err);
  Py_END_ALLOW_THREADS
  if (rc != ST_OK) {
    raise_status(rc, &err, NULL);
    goto done;
  }
  for (d = 0; d < 8; d++)
    hsize |= (uint64_t)((const unsigned char *)map)[d] << (8 * d);
  hsize += 8;
  if (hsize > size) {
    raise_simple(ST_ERR_IO, "writer produced a header past the file", NULL);
    goto done;
  }
  out = Py_BuildValue("(y#K)", (const char *)map, (Py_ssize_t)hsize,
                      (unsigned long long)size);
done:
  if (map != MAP_FAILED)
    munmap(map, (size_t)size);
  PyMem_Free(shape);
  Py_XDECREF(fast);
  st_writer_free(w);
  return out;
}

static PyObject *mod_dtype_names(PyObject *Py_UNUSED(m),
                                 PyObject *Py_UNUSED(ign)) {
  PyObject *t = PyTuple_New(ST_DTYPE_COUNT);
  int k;
  if (t == NULL)
    return NULL;
  for (k = 0; k < ST_DTYPE_COUNT; k++) {
    PyObject *s = PyUnicode_FromString(st_dtype_name((st_dtype)k));
    if (s == NULL) {
      Py_DECREF(t);
      return NULL;
    }
    PyTuple_SET_ITEM(t, k, s);
  }
  return t;
}

/* DtypeInfo: one row of the C core's dtype table, as bindings see it. */
static PyTypeObject *g_dtype_type;

static PyStructSequence_Field dtype_fields[] = {
    {"name", "the format's name, e.g. \"F32\""},
    {"number", "the pinned st_dtype number"},
    {"bits", "bits per element"},
    {"torch_name", "torch's name of the dtype it loads as (\"uint8\" for F6)"},
    {"c10_name", "the c10::ScalarType name"},
    {"torch_values", "file values per torch element: 1, 2 (F4), 0 (F6)"},
    {NULL, NULL}};

static PyStructSequence_Desc dtype_desc = {
    "torch_safetensors._C.DtypeInfo",
    "A dtype of the format and its torch mapping (st_dtype_name,\n"
    "st_dtype_bits, st_dtype_torch_name, st_dtype_c10_name,\n"
    "st_dtype_torch_values).",
    dtype_fields, 6};

static PyObject *mod_dtypes(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ign)) {
  PyObject *t = PyTuple_New(ST_DTYPE_COUNT);
  int k;
  if (t == NULL)
    return NULL;
  for (k = 0; k < ST_DTYPE_COUNT; k++) {
    st_dtype d = (st_dtype)k;
    PyObject *row = PyStructSequence_New(g_dtype_type);
    PyObject *v[6];
    int j, bad = 0;
    if (row == NULL) {
      Py_DECREF(t);
      return NULL;
    }
    v[0] = PyUnicode_FromString(st_dtype_name(d));
    v[1] = PyLong_FromLong(k);
    v[2] = PyLong_FromUnsignedLong(st_dtype_bits(d));
    v[3] = PyUnicode_FromString(st_dtype_torch_name(d));
    v[4] = PyUnicode_FromString(st_dtype_c10_name(d));
    v[5] = PyLong_FromUnsignedLong(st_dtype_torch_values(d));
    for (j = 0; j < 6; j++) {
      if (v[j] == NULL)
        bad = 1;
      else
        PyStructSequence_SET_ITEM(row, j, v[j]);
    }
    PyTuple_SET_ITEM(t, k, row);
    if (bad) {
      Py_DECREF(t);
      return NULL;
    }
  }
  return t;
}

static PyObject *mod_dtype_from_torch_name(PyObject *Py_UNUSED(m),
                                           PyObject *arg) {
  Py_ssize_t len;
  const char *s = PyUnicode_AsUTF8AndSize(arg, &len);
  st_dtype d;
  if (s == NULL)
    return NULL;
  if (st_dtype_from_torch_name(s, (size_t)len, &d) != ST_OK)
    Py_RETURN_NONE;
  return PyUnicode_FromString(st_dtype_name(d));
}

static PyMethodDef module_methods[] = {
    {"dtypes", mod_dtypes, METH_NOARGS,
     "dtypes() -> tuple of DtypeInfo, indexed by st_dtype number"},
    {"dtype_from_torch_name", mod_dtype_from_torch_name, METH_O,
     "dtype_from_torch_name(name) -> the file dtype name a torch dtype\n"
     "(\"float32\", \"torch.float32\" or \"Float\") saves as, or None"},
    {"_set_error_factory", mod_set_error_factory, METH_O,
     "_set_error_factory(f): f(status, errno) -> SafetensorError subclass."},
    {"_raise", mod_raise_status, METH_VARARGS,
     "_raise(status, message, tensor_name=None): raises as the C layer does."},
    {"status_name", mod_status_name, METH_O, "status_name(code) -> str"},
    {"sniff", mod_sniff, METH_VARARGS,
     "sniff(head, file_size) -> (could_be_safetensors, what_it_is_or_None)"},
    {"dtype_bits", mod_dtype_bits, METH_O, "dtype_bits(name) -> int"},
    {"torch_shape", mod_torch_shape, METH_VARARGS,
     "torch_shape(dtype_name, shape) -> the torch shape of a tensor (or\n"
     "slice) of that file dtype and file shape, by the view policy"},
    {"pwrite_runs", mod_pwrite_runs, METH_VARARGS,
     "pwrite_runs(fd, address, run, offsets): len(offsets) runs of run\n"
     "bytes, back to back in memory from address, each written at its file\n"
     "offset (offsets: a buffer of native int64); GIL released; OSError."},
    {"layout", mod_layout, METH_VARARGS,
     "layout(tensors, metadata) -> (header, file_size): the first 8 + N\n"
     "bytes the writer writes for tensors, a sequence of (name, dtype,\n"
     "shape), and metadata (None, or a dict of str), with no tensor data."},
    {"dtype_names", mod_dtype_names, METH_NOARGS,
     "dtype_names() -> the 22 names, by writer rank"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_C",
    "CPython binding of the safetensors C library (no torch headers).", -1,
    module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__C(void);
int st_py_quant_register(PyObject *module); /* quant.c */

PyMODINIT_FUNC PyInit__C(void) {
  PyObject *m, *dict;
  if (PyType_Ready(&File_Type) < 0 || PyType_Ready(&View_Type) < 0 ||
      PyType_Ready(&Writer_Type) < 0)
    return NULL;
  if (g_info_type == NULL &&
      (g_info_type = PyStructSequence_NewType(&info_desc)) == NULL)
    return NULL;
  if (g_dtype_type == NULL &&
      (g_dtype_type = PyStructSequence_NewType(&dtype_desc)) == NULL)
    return NULL;
  m = PyModule_Create(&module_def);
  if (m == NULL)
    return NULL;
  dict = Py_BuildValue("{sOsOsOsOsOsO}", "status", Py_None, "status_name",
                       Py_None, "offset", Py_None, "tensor_name", Py_None,
                       "sys_errno", Py_None, "filename", Py_None);
  if (dict == NULL)
    goto fail;
  g_error_type = PyErr_NewExceptionWithDoc(
      "torch_safetensors._C.SafetensorError",
      "Every failure of the safetensors library: status (int), status_name,\n"
      "offset (byte offset in the file or None), tensor_name (or None),\n"
      "sys_errno.",
      NULL, dict);
  Py_DECREF(dict);
  if (g_error_type == NULL)
    goto fail;
  if (PyModule_AddObjectRef(m, "SafetensorError", g_error_type) < 0 ||
      PyModule_AddObjectRef(m, "File", (PyObject *)&File_Type) < 0 ||
      PyModule_AddObjectRef(m, "View", (PyObject *)&View_Type) < 0 ||
      PyModule_AddObjectRef(m, "Writer", (PyObject *)&Writer_Type) < 0 ||
      PyModule_AddObjectRef(m, "TensorInfo", (PyObject *)g_info_type) < 0 ||
      PyModule_AddObjectRef(m, "DtypeInfo", (PyObject *)g_dtype_type) < 0 ||
      PyModule_AddIntConstant(m, "VIEW_PACKED", ST_VIEW_PACKED) < 0 ||
      PyModule_AddIntConstant(m, "VIEW_FLAT", ST_VIEW_FLAT) < 0 ||
      PyModule_AddIntConstant(m, "VIEW_COPY", ST_VIEW_COPY) < 0 ||
      PyModule_AddStringConstant(m, "VERSION", st_version_string()) < 0 ||
      PyModule_AddIntConstant(m, "EXEC_NO_PREFAULT", ST_EXEC_NO_PREFAULT) < 0 ||
      PyModule_AddIntConstant(m, "EXEC_DIRECT", ST_EXEC_DIRECT) < 0 ||
      PyModule_AddIntConstant(m, "EXEC_HUGEPAGES", ST_EXEC_HUGEPAGES) < 0 ||
      st_py_quant_register(m) < 0)
    goto fail;
  {
    int k;
    for (k = 0; k <= (int)ST_ERR_FILE_CHANGED; k++) {
      if (PyModule_AddIntConstant(m, st_status_name((st_status)k), k) < 0)
        goto fail;
    }
  }
  return m;
fail:
  Py_DECREF(m);
  return NULL;
}
