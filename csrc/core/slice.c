/* Strided slices with Python's semantics. The slice is cut into rows: the
 * innermost dimension that is not taken whole, with every whole dimension
 * inside it, is one contiguous run (step 1) or a set of equally spaced runs
 * (step > 1); the outer dimensions are walked with an odometer. */
#include <string.h>

#include "common/checked.h"
#include "file.h"
#include "internal.h"

#define LOCAL_RANK 64

typedef struct dimres {
  uint64_t start, step, count;
} dimres;

static uint64_t clamp_index(int64_t v, uint64_t dim) {
  if (v < 0) {
    uint64_t neg = (uint64_t)0 - (uint64_t)v;
    return neg >= dim ? 0 : dim - neg;
  }
  return (uint64_t)v > dim ? dim : (uint64_t)v;
}

static dimres resolve(const st__tensor *t, const st_range *r, size_t nr, size_t d) {
  dimres out;
  uint64_t dim = t->shape[d];
  if (d >= nr) {
    out.start = 0;
    out.step = 1;
    out.count = dim;
    return out;
  }
  uint64_t start = clamp_index(r[d].start, dim), stop = clamp_index(r[d].stop, dim);
  out.start = start;
  out.step = (uint64_t)r[d].step;
  out.count = stop > start ? (stop - start - 1) / out.step + 1 : 0;
  return out;
}

typedef struct plan {
  const st__tensor *t;
  uint64_t nbytes;
  size_t k;        /* dims 0..k-1 are cut; k-1 is the row dimension */
  uint64_t inner;  /* elements of the whole dimensions after k-1 */
} plan;

static st_status make_plan(const st_file *f, size_t index, const st_range *ranges,
                           size_t nranges, uint64_t *out_shape, plan *p) {
  if (f == NULL || index >= f->ntensors || (ranges == NULL && nranges > 0))
    return ST_ERR_INVALID_ARGUMENT;
  const st__tensor *t = &f->tensors[index];
  if (nranges > t->rank) return ST_ERR_INVALID_SLICE;
  for (size_t d = 0; d < nranges; d++)
    if (ranges[d].step < 1) return ST_ERR_INVALID_SLICE;
  bool empty = false;
  for (size_t d = 0; d < t->rank; d++) {
    dimres r = resolve(t, ranges, nranges, d);
    if (out_shape != NULL) out_shape[d] = r.count;
    if (r.count == 0) empty = true;
  }
  p->t = t;
  p->nbytes = 0;
  p->k = 0;
  p->inner = 1;
  if (empty) return ST_OK;
  /* No dimension is 0 here, so every product below is <= numel. */
  uint64_t bits = st__dtype_bits(t->dtype), out_numel = 1;
  for (size_t d = 0; d < t->rank; d++) out_numel *= resolve(t, ranges, nranges, d).count;
  size_t k = t->rank;
  uint64_t inner = 1;
  while (k > 0) {
    dimres r = resolve(t, ranges, nranges, k - 1);
    if (r.start != 0 || r.count != t->shape[k - 1]) break;
    inner *= t->shape[k - 1];
    k--;
  }
  if (bits % 8 != 0 && k > 0) {
    /* Sub-byte: every run must start and end on a byte boundary. */
    dimres rk = resolve(t, ranges, nranges, k - 1);
    uint64_t run = (rk.step == 1 ? rk.count : 1) * inner;
    bool ok = (run % 8) * bits % 8 == 0;
    uint64_t stride = inner;
    for (size_t d = k; d-- > 0 && ok;) {
      dimres r = resolve(t, ranges, nranges, d);
      if ((r.start % 8) * (stride % 8) * bits % 8 != 0) ok = false;
      bool one_run = d == k - 1 && r.step == 1;
      if (!one_run && r.count > 1 && (r.step % 8) * (stride % 8) * bits % 8 != 0) ok = false;
      stride *= t->shape[d];
    }
    if (!ok) return ST_ERR_UNSUPPORTED;
  }
  p->nbytes = out_numel * bits / 8;
  p->k = k;
  p->inner = inner;
  return ST_OK;
}

st_status st_slice_shape(const st_file *f, size_t index, const st_range *ranges, size_t nranges,
                         uint64_t *out_shape, uint64_t *nbytes) {
  plan p;
  st_status st = make_plan(f, index, ranges, nranges, out_shape, &p);
  if (st != ST_OK) return st;
  if (nbytes != NULL) *nbytes = p.nbytes;
  return ST_OK;
}

st_status st__slice_fail(st_error *err, st_status st, const st__tensor *t) {
  const char *msg = st == ST_ERR_INVALID_SLICE ? "the slice does not fit the tensor"
                  : st == ST_ERR_UNSUPPORTED ? "a sub-byte slice that cuts inside a byte"
                                             : "invalid argument";
  return st__fail(err, st, msg, ST_NO_OFFSET, t != NULL ? t->name : NULL,
                  t != NULL ? t->name_len : 0, 0);
}

st_status st__slice_walk(const st_file *f, size_t index, const st_range *ranges, size_t nranges,
                         st__slice_row_fn fn, void *ctx, st_error *err) {
  plan p;
  st_status st = make_plan(f, index, ranges, nranges, NULL, &p);
  if (st != ST_OK)
    return st__slice_fail(err, st, (f != NULL && index < f->ntensors) ? &f->tensors[index] : NULL);
  const st__tensor *t = p.t;
  if (p.nbytes == 0) return ST_OK;
  const uint64_t bits = st__dtype_bits(t->dtype);
  if (p.k == 0) {
    st__slice_row whole = {t->begin, 1, p.nbytes, p.nbytes};
    return fn(ctx, &whole, err);
  }
  const size_t kd = p.k - 1; /* the row dimension; 0..kd-1 are walked */
  uint64_t local[2 * LOCAL_RANK];
  uint64_t *idx = local, *stride;
  if (kd > LOCAL_RANK) {
    idx = st__calloc(f->alloc, 2 * kd, sizeof *idx);
    if (idx == NULL)
      return st__fail(err, ST_ERR_NOMEM, "cannot allocate slice state", ST_NO_OFFSET, NULL, 0, 0);
  }
  stride = idx + (kd > LOCAL_RANK ? kd : LOCAL_RANK);
  uint64_t s = p.inner * t->shape[kd];
  for (size_t d = kd; d-- > 0;) {
    idx[d] = 0;
    stride[d] = s;
    s *= t->shape[d];
  }
  dimres rk = resolve(t, ranges, nranges, kd);
  st__slice_row row;
  row.nruns = rk.step == 1 ? 1 : rk.count;
  row.run_bytes = (rk.step == 1 ? rk.count : 1) * p.inner * bits / 8;
  row.run_stride = rk.step * p.inner * bits / 8;
  for (;;) {
    uint64_t elem = rk.start * p.inner;
    for (size_t d = 0; d < kd; d++) {
      dimres r = resolve(t, ranges, nranges, d);
      elem += (r.start + idx[d] * r.step) * stride[d];
    }
    row.offset = t->begin + elem * bits / 8;
    st = fn(ctx, &row, err);
    if (st != ST_OK) break;
    /* Next row: the odometer over dims 0..kd-1. */
    size_t d = kd;
    bool more = false;
    while (d > 0) {
      d--;
      if (++idx[d] < resolve(t, ranges, nranges, d).count) {
        more = true;
        break;
      }
      idx[d] = 0;
    }
    if (!more) break;
  }
  if (idx != local) st__free(f->alloc, idx);
  return st;
}
