/* The header: the strict JSON reader of csrc/common (grammar, UTF-8,
 * nesting limit, tokens), then the semantic walk over the tokens and the
 * validation of the tensor table. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common/checked.h"
#include "common/json.h"
#include "file.h"
#include "internal.h"

#define HDR 8u /* file offset of header byte 0 */

static st_status jfail(st_error *err, st_status code, const char *msg,
                       size_t pos) {
  return st__fail(err, code, msg, (uint64_t)pos + HDR, NULL, 0, 0);
}

static st_status nfail(st_error *err, st_status code, const char *msg,
                       uint64_t pos, const unsigned char *name, size_t len) {
  return st__fail(err, code, msg, pos, (const char *)name, len, 0);
}

/* ---- strings: escapes decoded ------------------------------------------- */

typedef struct strview {
  const unsigned char *s; /* raw bytes between the quotes */
  size_t len;
  size_t pos;             /* header index of s[0] */
} strview;

/* Decodes into out (room for v->len + 1 bytes), NUL-terminates, returns the
 * length. *nul_at gets the header index of a decoded U+0000, else SIZE_MAX. */
static size_t decode_into(const strview *v, unsigned char *out, size_t *nul_at) {
  size_t len = st__json_unescape(v->s, v->len, out, v->len + 1, NULL, nul_at);
  if (*nul_at != SIZE_MAX) *nul_at += v->pos;
  return len;
}

/* As nfail, naming a tensor by its raw key: the escapes are decoded for the
 * error record (only the prefix that fits is kept). */
static st_status sfail(st_error *err, st_status code, const char *msg, uint64_t pos,
                       const strview *v) {
  unsigned char buf[ST_ERROR_NAME_CAP];
  size_t o;
  size_t full = st__json_unescape(v->s, v->len, buf, ST_ERROR_NAME_CAP - 1, &o, NULL);
  st_status st = st__fail(err, code, msg, pos, (const char *)buf, o, 0);
  if (err != NULL) err->name_len = full;
  return st;
}

static bool str_is(const strview *v, const char *lit) {
  return st__json_unescaped_is(v->s, v->len, lit, strlen(lit));
}

/* ---- the semantic walk ------------------------------------------------- */

typedef struct walk {
  const unsigned char *h;
  const st__json_tok *t;
  size_t ntok;
  const st__json *doc;
  st_error *err;
} walk;

static strview tok_str(const walk *w, size_t k) {
  strview v;
  v.s = st__json_raw(w->doc, k, &v.len);
  v.pos = w->t[k].start;
  return v;
}

/* File offset of a token: the opening quote of a string. */
static uint64_t tok_pos(const walk *w, size_t k) {
  return (uint64_t)st__json_pos(w->doc, k) + HDR;
}

/* Index of the token after the subtree rooted at k. */
static size_t skip(const walk *w, size_t k) { return w->t[k].next; }

static bool tok_u64(const walk *w, size_t k, uint64_t *out) {
  return st__json_u64(w->doc, k, out);
}

static int cmp_name(const char *a, size_t al, const char *b, size_t bl) {
  return st__bytes_cmp(a, al, b, bl);
}

static int cmp_tensor_name(const void *pa, const void *pb) {
  const st__tensor *a = pa, *b = pb;
  return cmp_name(a->name, a->name_len, b->name, b->name_len);
}

static int cmp_tensor_range(const void *pa, const void *pb) {
  const st__tensor *a = pa, *b = pb;
  if (a->begin != b->begin) return a->begin < b->begin ? -1 : 1;
  if (a->end != b->end) return a->end < b->end ? -1 : 1;
  return cmp_name(a->name, a->name_len, b->name, b->name_len);
}

/* qsort_r comparator over indices into the tensor array ctx. */
static int cmp_index_name(const void *pa, const void *pb, void *ctx) {
  const st__tensor *t = ctx;
  return cmp_tensor_name(&t[*(const size_t *)pa], &t[*(const size_t *)pb]);
}

static int cmp_meta(const void *pa, const void *pb) {
  const st__meta *a = pa, *b = pb;
  return cmp_name(a->key, a->key_len, b->key, b->key_len);
}

/* One tensor entry: the object at token v, named by the key at token k. */
static st_status walk_entry(const walk *w, size_t k, size_t v,
                            const st_open_options *o, st__tensor *t) {
  strview name = tok_str(w, k);
  if (w->t[v].type != ST__JSON_OBJECT)
    return sfail(w->err, ST_ERR_HEADER_DESERIALIZATION, "a tensor entry is not an object",
                 tok_pos(w, v), &name);
  bool have_dtype = false, have_shape = false, have_offsets = false;
  memset(t, 0, sizeof *t);
  t->aux = k;
  t->name_pos = tok_pos(w, k);
  size_t j = v + 1;
  for (uint32_t f = 0; f < w->t[v].size; f++) {
    size_t fk = j, fv = j + 1;
    if (fv >= w->ntok) return jfail(w->err, ST_ERR_HEADER_DESERIALIZATION, "truncated token stream", 0);
    strview field = tok_str(w, fk);
    bool *seen = NULL;
    if (str_is(&field, "dtype")) seen = &have_dtype;
    else if (str_is(&field, "shape")) seen = &have_shape;
    else if (str_is(&field, "data_offsets")) seen = &have_offsets;
    if (seen != NULL && *seen)
      return sfail(w->err, ST_ERR_DUPLICATE_KEY, "a field appears twice in a tensor entry",
                   tok_pos(w, fk), &name);
    if (seen == &have_dtype) {
      st_status bad = ST_ERR_HEADER_DESERIALIZATION;
      if (w->t[fv].type != ST__JSON_STRING)
        return sfail(w->err, bad, "dtype is not a string", tok_pos(w, fv), &name);
      strview d = tok_str(w, fv);
      /* Longest name (11 bytes), every byte spelled as a \uXXXX escape. */
      unsigned char buf[6 * 11 + 1];
      size_t nul;
      if (d.len >= sizeof buf)
        return sfail(w->err, bad, "unknown dtype", tok_pos(w, fv), &name);
      size_t dl = decode_into(&d, buf, &nul);
      if (st_dtype_from_name((const char *)buf, dl, &t->dtype) != ST_OK)
        return sfail(w->err, bad, "unknown dtype", tok_pos(w, fv), &name);
    } else if (seen == &have_shape) {
      if (w->t[fv].type != ST__JSON_ARRAY)
        return sfail(w->err, ST_ERR_HEADER_DESERIALIZATION, "shape is not an array",
                     tok_pos(w, fv), &name);
      size_t rank = (size_t)w->t[fv].size;
      if (rank > o->max_rank)
        return sfail(w->err, ST_ERR_LIMIT, "more dimensions than the rank limit",
                     tok_pos(w, fv), &name);
      uint64_t numel = 1;
      for (size_t d = 0; d < rank; d++) {
        uint64_t dim;
        if (fv + 1 + d >= w->ntok || !tok_u64(w, fv + 1 + d, &dim))
          return sfail(w->err, ST_ERR_HEADER_DESERIALIZATION,
                       "a dimension is not a non-negative 64-bit integer",
                       tok_pos(w, fv + 1 + d < w->ntok ? fv + 1 + d : fv), &name);
        if (st__mul_overflow_u64(numel, dim, &numel)) t->overflow = true;
      }
      t->rank = (uint32_t)rank;
      t->numel = numel;
      t->shape_tok = fv;
    } else if (seen == &have_offsets) {
      if (w->t[fv].type != ST__JSON_ARRAY || w->t[fv].size != 2)
        return sfail(w->err, ST_ERR_HEADER_DESERIALIZATION,
                     "data_offsets is not an array of two integers", tok_pos(w, fv), &name);
      for (size_t d = 0; d < 2; d++) {
        if (fv + 1 + d >= w->ntok || !tok_u64(w, fv + 1 + d, d == 0 ? &t->begin : &t->end))
          return sfail(w->err, ST_ERR_HEADER_DESERIALIZATION,
                       "an offset is not a non-negative 64-bit integer",
                       tok_pos(w, fv + 1 + d < w->ntok ? fv + 1 + d : fv), &name);
      }
    }
    if (seen != NULL) *seen = true;
    j = skip(w, fv);
  }
  if (!have_dtype || !have_shape || !have_offsets)
    return sfail(w->err, ST_ERR_HEADER_DESERIALIZATION,
                 !have_dtype ? "missing field dtype" : !have_shape ? "missing field shape"
                                                     : "missing field data_offsets",
                 tok_pos(w, v), &name);
  return ST_OK;
}

void st__header_free(st_file *f) {
  st__free(f->alloc, f->arena);
  st__free(f->alloc, f->tensors);
  st__free(f->alloc, f->name_order);
  st__free(f->alloc, f->meta);
  f->arena = NULL;
  f->tensors = NULL;
  f->name_order = NULL;
  f->meta = NULL;
  f->ntensors = 0;
  f->nmeta = 0;
}

/* Large blocks get their page tables populated in one call where the I/O
 * layer offers it (st_file.populate): a fault per fresh page is the biggest
 * cost of opening a small file. */
#define POPULATE_MIN ((size_t)64 << 10)

/* malloc of n elements, overflow-checked, not zeroed. */
static void *alloc_n(const st_file *f, size_t n, size_t size) {
  size_t bytes;
  if (st__mul_overflow_size(n, size, &bytes)) return NULL;
  void *p = st__malloc(f->alloc, bytes);
  if (p != NULL && bytes >= POPULATE_MIN && f->populate != NULL) f->populate(p, bytes);
  return p;
}

/* The allocator the JSON reader gets: the caller's, with the token array
 * populated as alloc_n does. */
static void *populating_malloc(void *ctx, size_t size) {
  return alloc_n(ctx, 1, size);
}

static void *forward_realloc(void *ctx, void *ptr, size_t size) {
  return st__realloc(((const st_file *)ctx)->alloc, ptr, size);
}

static void forward_free(void *ctx, void *ptr) {
  st__free(((const st_file *)ctx)->alloc, ptr);
}

static st_status nomem(st_error *err, const char *what) {
  return st__fail(err, ST_ERR_NOMEM, what, ST_NO_OFFSET, NULL, 0, 0);
}

/* Everything after tokenization. */
static st_status build(st_file *f, const walk *w, uint64_t file_size, uint64_t n,
                       const st_open_options *o) {
  st_error *err = w->err;
  const st_allocator *a = f->alloc;
  const st__json_tok *t = w->t;
  if (w->ntok == 0 || t[0].type != ST__JSON_OBJECT)
    return jfail(err, ST_ERR_HEADER_DESERIALIZATION, "the header is not a JSON object", 0);
  size_t members = (size_t)t[0].size;
  size_t nt = 0, cap = 0, meta_tok = 0;
  bool seen_meta = false;
  uint64_t chars = 0, dims = 0; /* arena needs */
  size_t i = 1;
  st_status st;
  for (size_t m = 0; m < members; m++) {
    size_t k = i, v = i + 1;
    if (v >= w->ntok) return jfail(err, ST_ERR_HEADER_DESERIALIZATION, "truncated token stream", 0);
    strview key = tok_str(w, k);
    if (str_is(&key, "__metadata__")) {
      if (seen_meta)
        return sfail(err, ST_ERR_DUPLICATE_KEY, "__metadata__ appears twice", tok_pos(w, k),
                     &key);
      seen_meta = true;
      if (t[v].type == ST__JSON_OBJECT) {
        meta_tok = v;
        size_t j = v + 1;
        for (uint32_t e = 0; e < t[v].size; e++) {
          if (j + 1 >= w->ntok || t[j + 1].type != ST__JSON_STRING)
            return jfail(err, ST_ERR_HEADER_DESERIALIZATION, "a metadata value is not a string",
                         (size_t)(tok_pos(w, j + 1 < w->ntok ? j + 1 : j) - HDR));
          chars += (uint64_t)(t[j].end - t[j].start) + (uint64_t)(t[j + 1].end - t[j + 1].start) + 2;
          j += 2;
        }
      } else if (!(st__json_is_null(w->doc, v))) {
        return jfail(err, ST_ERR_HEADER_DESERIALIZATION, "__metadata__ is not an object",
                     (size_t)(tok_pos(w, v) - HDR));
      }
    } else {
      if (nt >= o->max_tensors)
        return sfail(err, ST_ERR_LIMIT, "more tensors than the limit", tok_pos(w, k), &key);
      if (nt == cap) {
        /* Grown as entries prove valid, so junk cannot make a big table. */
        size_t ncap = cap == 0 ? 16 : cap * 2;
        if (ncap > members) ncap = members; /* members < ntok: no overflow */
        size_t bytes;
        st__tensor *grown = NULL;
        if (!st__mul_overflow_size(ncap, sizeof *grown, &bytes)) grown = st__realloc(a, f->tensors, bytes);
        if (grown == NULL) return nomem(err, "cannot allocate the tensor table");
        f->tensors = grown;
        cap = ncap;
      }
      st__tensor *te = &f->tensors[nt];
      if ((st = walk_entry(w, k, v, o, te)) != ST_OK) return st;
      nt++;
      chars += key.len + 1;
      dims += te->rank;
    }
    i = skip(w, v);
  }
  f->ntensors = nt;

  /* One arena: shapes first (aligned), then every string. */
  uint64_t arena_size;
  size_t asz;
  if (st__mul_overflow_u64(dims, sizeof(uint64_t), &arena_size) ||
      st__add_overflow_u64(arena_size, chars, &arena_size) || !st__u64_to_size(arena_size, &asz))
    return nomem(err, "the name arena is too large");
  f->arena = st__malloc(a, asz);
  if (f->arena == NULL) return nomem(err, "cannot allocate the name arena");
  uint64_t *dim_out = f->arena;
  unsigned char *chr = (unsigned char *)f->arena + (size_t)dims * sizeof(uint64_t);
  for (size_t x = 0; x < nt; x++) {
    st__tensor *te = &f->tensors[x];
    for (uint32_t d = 0; d < te->rank; d++) (void)tok_u64(w, te->shape_tok + 1 + d, &dim_out[d]);
    te->shape = dim_out;
    dim_out += te->rank;
    strview nv = tok_str(w, te->aux);
    size_t nul;
    te->name_len = decode_into(&nv, chr, &nul);
    te->name = (const char *)chr;
    chr += te->name_len + 1;
    if (nul != SIZE_MAX)
      return nfail(err, ST_ERR_NUL_IN_STRING, "NUL in a tensor name", (uint64_t)nul + HDR,
                   (const unsigned char *)te->name, te->name_len);
    if (te->name_len > o->max_name_len)
      return nfail(err, ST_ERR_LIMIT, "a tensor name is longer than the limit", te->name_pos,
                   (const unsigned char *)te->name, te->name_len);
  }
  if (meta_tok != 0 && t[meta_tok].size > 0) {
    size_t nm = (size_t)t[meta_tok].size;
    f->meta = alloc_n(f, nm, sizeof *f->meta);
    if (f->meta == NULL) return nomem(err, "cannot allocate the metadata table");
    size_t j = meta_tok + 1;
    for (size_t e = 0; e < nm; e++, j += 2) {
      st__meta *me = &f->meta[e];
      strview kv = tok_str(w, j), vv = tok_str(w, j + 1);
      size_t nk, nv2;
      me->key_pos = tok_pos(w, j);
      me->key_len = decode_into(&kv, chr, &nk);
      me->key = (const char *)chr;
      chr += me->key_len + 1;
      me->value_len = decode_into(&vv, chr, &nv2);
      me->value = (const char *)chr;
      chr += me->value_len + 1;
      if (nk != SIZE_MAX || nv2 != SIZE_MAX)
        return nfail(err, ST_ERR_NUL_IN_STRING,
                     nk != SIZE_MAX ? "NUL in a metadata key" : "NUL in a metadata value",
                     (uint64_t)(nk != SIZE_MAX ? nk : nv2) + HDR,
                     (const unsigned char *)me->key, me->key_len);
    }
    f->nmeta = nm;
    qsort(f->meta, nm, sizeof *f->meta, cmp_meta);
    for (size_t e = 1; e < nm; e++) {
      const st__meta *p = &f->meta[e - 1], *q = &f->meta[e];
      if (cmp_meta(p, q) == 0) {
        const st__meta *later = p->key_pos > q->key_pos ? p : q;
        return nfail(err, ST_ERR_DUPLICATE_KEY, "a metadata key appears twice", later->key_pos,
                     (const unsigned char *)later->key, later->key_len);
      }
    }
  }

  /* Per tensor, in header order; reported after the duplicate check, which
   * explains an inconsistent entry better when its name appears twice. */
  st_status bad = ST_OK;
  const char *bad_msg = NULL;
  const st__tensor *bad_t = NULL;
  for (size_t x = 0; x < nt && bad == ST_OK; x++) {
    const st__tensor *te = &f->tensors[x];
    uint64_t bits;
    bad_t = te;
    if (te->overflow || st__mul_overflow_u64(te->numel, st__dtype_bits(te->dtype), &bits)) {
      bad = ST_ERR_VALIDATION_OVERFLOW;
      bad_msg = "element or bit count overflows 64 bits";
    } else if (bits % 8 != 0) {
      bad = ST_ERR_MISALIGNED_SLICE;
      bad_msg = "the tensor is not a whole number of bytes";
    } else if (te->end < te->begin) {
      bad = ST_ERR_INVALID_OFFSET;
      bad_msg = "data_offsets run backwards";
    } else if (te->end - te->begin != bits / 8) {
      bad = ST_ERR_INVALID_TENSOR_INFO;
      bad_msg = "byte range length differs from shape x dtype";
    }
  }
  /* Copied out: the sorts below move the records. */
  uint64_t bad_pos = bad_t != NULL ? bad_t->name_pos : 0;
  const char *bad_name = bad_t != NULL ? bad_t->name : NULL;
  size_t bad_len = bad_t != NULL ? bad_t->name_len : 0;

  /* Name order is an index sort (8-byte moves, not whole records), and
   * both sorts are skipped when the header is already in order: files from
   * the reference writer are in range order, and in name order too when
   * they hold one dtype. */
  if (nt > 0) {
    f->name_order = alloc_n(f, nt, sizeof *f->name_order);
    if (f->name_order == NULL) return nomem(err, "cannot allocate the name index");
    bool by_name = true;
    for (size_t x = 0; x < nt; x++) {
      f->name_order[x] = x;
      f->tensors[x].aux = x; /* header position, for the remap below */
      if (x > 0 && by_name && cmp_tensor_name(&f->tensors[x - 1], &f->tensors[x]) > 0) by_name = false;
    }
    if (!by_name) qsort_r(f->name_order, nt, sizeof *f->name_order, cmp_index_name, f->tensors);
    for (size_t k = 1; k < nt; k++) {
      const st__tensor *p = &f->tensors[f->name_order[k - 1]], *q = &f->tensors[f->name_order[k]];
      if (cmp_tensor_name(p, q) == 0) {
        const st__tensor *later = p->name_pos > q->name_pos ? p : q;
        return nfail(err, ST_ERR_DUPLICATE_KEY, "a tensor name appears twice", later->name_pos,
                     (const unsigned char *)later->name, later->name_len);
      }
    }
  }
  if (bad != ST_OK)
    return nfail(err, bad, bad_msg, bad_pos, (const unsigned char *)bad_name, bad_len);
  if (nt > 0) {
    bool by_range = true;
    for (size_t x = 1; x < nt && by_range; x++)
      if (cmp_tensor_range(&f->tensors[x - 1], &f->tensors[x]) > 0) by_range = false;
    if (!by_range) {
      qsort(f->tensors, nt, sizeof *f->tensors, cmp_tensor_range);
      size_t *pos = alloc_n(f, nt, sizeof *pos);
      if (pos == NULL) return nomem(err, "cannot allocate the name index");
      for (size_t x = 0; x < nt; x++) pos[f->tensors[x].aux] = x;
      for (size_t k = 0; k < nt; k++) f->name_order[k] = pos[f->name_order[k]];
      st__free(a, pos);
    }
  }

  uint64_t end = 0;
  for (size_t x = 0; x < nt; x++) {
    const st__tensor *te = &f->tensors[x];
    if (te->begin != end)
      return nfail(err, ST_ERR_INVALID_OFFSET,
                   te->begin > end ? "a hole before this tensor" : "this tensor overlaps another",
                   te->name_pos, (const unsigned char *)te->name, te->name_len);
    end = te->end;
  }
  uint64_t avail = file_size - HDR - n; /* framing checked 8 + n <= file_size */
  if (end != avail && !(end < avail && (o->flags & ST_OPEN_ALLOW_TRAILING_BYTES)))
    return st__fail(err, ST_ERR_INCOMPLETE_BUFFER,
                    end < avail ? "bytes after the last tensor" : "the data section is truncated",
                    HDR + n + end, NULL, 0, 0);
  f->data_size = end;
  return ST_OK;
}

/* Framing: N from the first 8 bytes, checked against the limit and size.
 * A file that fails it is named by what it looks like when we know. */
static st_status framing_fail(st_error *err, st_status code, const char *msg,
                              const unsigned char *first8, uint64_t file_size) {
  const char *what = st__sniff(first8, first8 != NULL ? HDR : 0, file_size);
  return st__fail(err, code, what != NULL ? what : msg, 0, NULL, 0, 0);
}

st_status st__framing(const unsigned char *first8, uint64_t file_size,
                         const st_open_options *o, uint64_t *n_out, st_error *err) {
  if (file_size < HDR)
    return framing_fail(err, ST_ERR_HEADER_TOO_SMALL, "file shorter than 8 bytes", NULL, file_size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | first8[i];
  if (n > o->max_header_size)
    return framing_fail(err, ST_ERR_HEADER_TOO_LARGE, "header length over the limit", first8,
                        file_size);
  uint64_t stop;
  if (st__add_overflow_u64(n, HDR, &stop) || stop > file_size)
    return framing_fail(err, ST_ERR_INVALID_HEADER_LENGTH,
                        "header length points past the end of the file", first8, file_size);
  size_t ns;
  if (!st__u64_to_size(n, &ns))
    return st__fail(err, ST_ERR_HEADER_TOO_LARGE, "header length does not fit in memory", 0, NULL, 0, 0);
  *n_out = n;
  return ST_OK;
}

static st_status json_status(const st__json_error *je) {
  switch (je->code) {
    case ST__JSON_UTF8: return ST_ERR_INVALID_HEADER;
    case ST__JSON_DEPTH: return ST_ERR_LIMIT;
    case ST__JSON_NOMEM: return ST_ERR_NOMEM;
    case ST__JSON_TOO_LARGE: return ST_ERR_LIMIT;
    default: return ST_ERR_HEADER_DESERIALIZATION;
  }
}

st_status st__header_parse(st_file *f, const unsigned char *header, size_t n,
                           uint64_t file_size, const st_open_options *o,
                           st_error *err) {
  st_allocator through = {populating_malloc, forward_realloc, forward_free, f};
  st__json doc;
  st__json_error je;
  if (st__json_parse(header, n, o->max_depth, ST__JSON_ROOT_OBJECT | ST__JSON_FINITE_NUMBERS,
                     &through, &doc, &je) != ST__JSON_OK) {
    st_status code = json_status(&je);
    if (code == ST_ERR_NOMEM || je.code == ST__JSON_TOO_LARGE)
      return st__fail(err, code, je.message, code == ST_ERR_NOMEM ? ST_NO_OFFSET : 0, NULL, 0, 0);
    return jfail(err, code, je.message, je.pos);
  }
  walk w = {header, doc.tok, doc.ntok, &doc, err};
  st_status st = build(f, &w, file_size, n, o);
  st__json_free(&doc);
  if (st != ST_OK) st__header_free(f);
  return st;
}
