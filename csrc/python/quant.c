/* torch_safetensors._C.dequantize: the dequantization kernels of the C
 * library (include/safetensors.h, "Dequantization") over Python buffers,
 * with the GIL released so that callers can split rows across threads. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define ST_EXPERIMENTAL_API
#include "safetensors.h"

int st_py_quant_register(PyObject *module);

static PyObject *py_dequantize(PyObject *self, PyObject *args) {
  unsigned int element, bits, out_dtype;
  unsigned long long rows, cols, scale_rows, scale_cols, row_begin, row_end;
  unsigned long long matrix_rows = 0;
  Py_buffer q, scale, zero, dst;
  PyObject *zero_obj;
  st_dequant d;
  st_error err;
  st_status st;
  (void)self;
  if (!PyArg_ParseTuple(args, "IIIKKKKy*y*OKKw*|K:dequantize", &element, &bits,
                        &out_dtype, &rows, &cols, &scale_rows, &scale_cols, &q, &scale,
                        &zero_obj, &row_begin, &row_end, &dst, &matrix_rows))
    return NULL;
  zero.buf = NULL;
  zero.len = 0;
  zero.obj = NULL;
  if (zero_obj != Py_None && PyObject_GetBuffer(zero_obj, &zero, PyBUF_SIMPLE) < 0) {
    PyBuffer_Release(&q);
    PyBuffer_Release(&scale);
    PyBuffer_Release(&dst);
    return NULL;
  }
  st_dequant_init(&d);
  d.element = element;
  d.bits = bits;
  d.out_dtype = (st_dtype)out_dtype;
  d.rows = rows;
  d.cols = cols;
  d.scale_rows = scale_rows;
  d.scale_cols = scale_cols;
  d.q = q.buf;
  d.q_size = (size_t)q.len;
  d.scale = (const float *)scale.buf;
  d.scale_count = (size_t)scale.len / sizeof(float);
  d.zero = (const float *)zero.buf;
  d.zero_count = (size_t)zero.len / sizeof(float);
  if (matrix_rows != 0) {
    d.flags = ST_DEQUANT_TRANSPOSED;
    d.matrix_rows = matrix_rows;
  }
  Py_BEGIN_ALLOW_THREADS
  st = st_dequantize(&d, row_begin, row_end, dst.buf, (size_t)dst.len, &err);
  Py_END_ALLOW_THREADS
  PyBuffer_Release(&q);
  PyBuffer_Release(&scale);
  PyBuffer_Release(&dst);
  if (zero.obj != NULL)
    PyBuffer_Release(&zero);
  if (st != ST_OK) {
    PyErr_Format(PyExc_ValueError, "st_dequantize: %s (%s)", err.message,
                 st_status_name(st));
    return NULL;
  }
  Py_RETURN_NONE;
}

static PyMethodDef quant_methods[] = {
    {"dequantize", py_dequantize, METH_VARARGS,
     "dequantize(element, bits, out_dtype, rows, cols, scale_rows, scale_cols,\n"
     "q, scale, zero, row_begin, row_end, dst, matrix_rows=0): st_dequantize\n"
     "over buffers (scale, zero: float32; zero may be None), rows [row_begin,\n"
     "row_end) into dst (the whole result, transposed per matrix of\n"
     "matrix_rows rows, when matrix_rows is not 0); the GIL is released."},
    {NULL, NULL, 0, NULL}};

int st_py_quant_register(PyObject *module) {
  if (PyModule_AddFunctions(module, quant_methods) < 0 ||
      PyModule_AddIntConstant(module, "QUANT_INT_PACKED", ST_QUANT_INT_PACKED) < 0 ||
      PyModule_AddIntConstant(module, "QUANT_FP8_E4M3", ST_QUANT_FP8_E4M3) < 0 ||
      PyModule_AddIntConstant(module, "QUANT_FP8_E5M2", ST_QUANT_FP8_E5M2) < 0 ||
      PyModule_AddIntConstant(module, "QUANT_FP4_E2M1", ST_QUANT_FP4_E2M1) < 0)
    return -1;
  return 0;
}
