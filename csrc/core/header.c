/* The header: a strict JSON syntax scan, jsmn tokenization, the semantic
 * walk over the tokens, and validation of the tensor table.
 *
 * jsmn is lenient (it accepts stray and missing commas and colons, trailing
 * commas, bad primitives) and its bracket handling costs O(depth) per
 * bracket, so a linear pre-scan checks the complete JSON grammar, the
 * nesting limit and every string first, and counts the tokens. jsmn then
 * only has to cut a text already known to be valid. */
#include <limits.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "file.h"
#include "internal.h"

#define JSMN_STATIC
#define JSMN_STRICT
#define JSMN_PARENT_LINKS
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wsign-conversion"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#include <jsmn.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#define HDR 8u /* file offset of header byte 0 */

static st_status jfail(st_error *err, st_status code, const char *msg,
                       size_t pos) {
  return st__fail(err, code, msg, (uint64_t)pos + HDR, NULL, 0, 0);
}

static st_status nfail(st_error *err, st_status code, const char *msg,
                       uint64_t pos, const unsigned char *name, size_t len) {
  return st__fail(err, code, msg, pos, (const char *)name, len, 0);
}

static bool is_ws(unsigned c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static bool is_digit(unsigned c) { return c >= '0' && c <= '9'; }

static int hex_val(unsigned c) {
  if (c >= '0' && c <= '9') return (int)(c - '0');
  if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
  if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
  return -1;
}

/* Four hex digits at s[i..i+4), or -1. */
static long hex4(const unsigned char *s, size_t i, size_t n) {
  if (i > n || n - i < 4) return -1;
  long v = 0;
  for (size_t k = 0; k < 4; k++) {
    int d = hex_val(s[i + k]);
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

/* ---- pre-scan: the complete JSON grammar, in one linear pass ---------- */

typedef struct scan {
  const unsigned char *h;
  size_t n;
  st_error *err;
} scan;

/* A string starting at the quote at i; *end gets the index after the
 * closing quote. */
static st_status scan_string(const scan *s, size_t i, size_t *end) {
  const unsigned char *h = s->h;
  size_t n = s->n;
  size_t j = i + 1;
  for (;;) {
    if (j >= n) return jfail(s->err, ST_ERR_HEADER_DESERIALIZATION, "unterminated string", n);
    unsigned c = h[j];
    if (c == '"') break;
    if (c < 0x20) return jfail(s->err, ST_ERR_HEADER_DESERIALIZATION, "control character in a string", j);
    if (c != '\\') {
      j++;
      continue;
    }
    if (j + 1 >= n) return jfail(s->err, ST_ERR_HEADER_DESERIALIZATION, "unterminated string", n);
    switch (h[j + 1]) {
      case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        j += 2;
        break;
      case 'u': {
        long u = hex4(h, j + 2, n);
        if (u < 0) return jfail(s->err, ST_ERR_HEADER_DESERIALIZATION, "invalid \\u escape", j);
        if (u >= 0xDC00 && u <= 0xDFFF)
          return jfail(s->err, ST_ERR_HEADER_DESERIALIZATION, "lone low surrogate", j);
        if (u >= 0xD800 && u <= 0xDBFF) {
          long lo = -1;
          if (j + 7 < n && h[j + 6] == '\\' && h[j + 7] == 'u') lo = hex4(h, j + 8, n);
          if (lo < 0xDC00 || lo > 0xDFFF)
            return jfail(s->err, ST_ERR_HEADER_DESERIALIZATION, "lone high surrogate", j);
          j += 12;
        } else {
          j += 6;
        }
        break;
      }
      default:
        return jfail(s->err, ST_ERR_HEADER_DESERIALIZATION, "invalid escape", j);
    }
  }
  *end = j + 1;
  return ST_OK;
}

/* DBL_MAX. The reference (serde_json) rejects a number whose value it
 * computes as infinite, anywhere, even in ignored fields; its conversion is
 * not correctly rounded, so only values within an ulp of DBL_MAX can get a
 * different verdict here. Never parsed through double. */
static const char f64_max[] = "1797693134862315708145274237317043567980";

/* A number starting at i (grammar checked); *end gets the index after it. */
static st_status scan_number(const scan *s, size_t i, size_t *end) {
  const unsigned char *h = s->h;
  size_t n = s->n, j = i;
  if (h[j] == '-') j++;
  if (j >= n || !is_digit(h[j])) return jfail(s->err, ST_ERR_HEADER_DESERIALIZATION, "invalid number", j);
  size_t int_begin = j;
  if (h[j] == '0') {
    j++;
  } else {
    while (j < n && is_digit(h[j])) j++;
  }
  size_t int_end = j, frac_begin = j, frac_end = j;
  if (j < n && h[j] == '.') {
    j++;
    frac_begin = j;
    if (j >= n || !is_digit(h[j])) return jfail(s->err, ST_ERR_HEADER_DESERIALIZATION, "invalid number", j);
    while (j < n && is_digit(h[j])) j++;
    frac_end = j;
  }
  int64_t exp = 0;
  if (j < n && (h[j] == 'e' || h[j] == 'E')) {
    j++;
    bool neg = false;
    if (j < n && (h[j] == '+' || h[j] == '-')) neg = h[j++] == '-';
    if (j >= n || !is_digit(h[j])) return jfail(s->err, ST_ERR_HEADER_DESERIALIZATION, "invalid number", j);
    while (j < n && is_digit(h[j])) {
      if (exp < 1000000000) exp = exp * 10 + (h[j] - '0'); /* saturates */
      j++;
    }
    if (neg) exp = -exp;
  }
  *end = j;
  /* Decimal exponent of the first significant digit. */
  size_t int_len = int_end - int_begin, frac_len = frac_end - frac_begin;
  size_t first = SIZE_MAX;
  for (size_t k = 0; k < int_len + frac_len; k++) {
    unsigned d = k < int_len ? h[int_begin + k] : h[frac_begin + k - int_len];
    if (d != '0') {
      first = k;
      break;
    }
  }
  if (first == SIZE_MAX) return ST_OK; /* zero */
  /* int_len and first are < 2^31 (the header is), so this cannot wrap. */
  int64_t e10 = (int64_t)int_len - 1 - (int64_t)first + exp;
  bool too_big = e10 > 308;
  if (e10 == 308) {
    for (size_t k = 0; k < sizeof f64_max - 1; k++) {
      size_t at = first + k;
      unsigned d = at < int_len ? h[int_begin + at]
                 : at < int_len + frac_len ? h[frac_begin + at - int_len] : '0';
      if (d != (unsigned char)f64_max[k]) {
        too_big = d > (unsigned char)f64_max[k];
        break;
      }
    }
  }
  if (too_big) return jfail(s->err, ST_ERR_HEADER_DESERIALIZATION, "number out of range", i);
  return ST_OK;
}

enum { S_VALUE, S_VALUE_OR_CLOSE, S_KEY, S_KEY_OR_CLOSE, S_COLON, S_AFTER, S_END };

/* Checks the whole text against the JSON grammar with a root object, and
 * the nesting limit; counts the tokens jsmn will produce. */
static st_status prescan(const unsigned char *h, size_t n, uint32_t max_depth,
                         const st_allocator *a, size_t *ntok, st_error *err) {
  scan s = {h, n, err};
  uint64_t local[4];
  uint64_t *stack = local; /* one bit per level: 1 = object */
  size_t cap = max_depth < n ? max_depth : n;
  if (cap > 64 * 4) {
    stack = st__malloc(a, (cap / 64 + 1) * sizeof *stack);
    if (stack == NULL) return st__fail(err, ST_ERR_NOMEM, "cannot allocate the nesting stack", ST_NO_OFFSET, NULL, 0, 0);
  }
  st_status st = ST_OK;
  size_t depth = 0, count = 0, i = 0;
  int state = S_VALUE;
  while (i < n) {
    unsigned c = h[i];
    if (is_ws(c)) {
      i++;
      continue;
    }
    bool in_obj = depth > 0 && ((stack[(depth - 1) / 64] >> ((depth - 1) % 64)) & 1u);
    switch (state) {
      case S_END:
        st = jfail(err, ST_ERR_HEADER_DESERIALIZATION, "trailing characters after the root object", i);
        goto done;
      case S_COLON:
        if (c != ':') {
          st = jfail(err, ST_ERR_HEADER_DESERIALIZATION, "expected ':'", i);
          goto done;
        }
        state = S_VALUE;
        i++;
        continue;
      case S_AFTER:
        if (c == ',') {
          state = in_obj ? S_KEY : S_VALUE;
          i++;
          continue;
        }
        if ((c == '}' && in_obj) || (c == ']' && !in_obj)) goto close;
        st = jfail(err, ST_ERR_HEADER_DESERIALIZATION,
                   in_obj ? "expected ',' or '}'" : "expected ',' or ']'", i);
        goto done;
      case S_KEY_OR_CLOSE:
        if (c == '}') goto close;
        /* fall through */
      case S_KEY:
        if (c != '"') {
          st = jfail(err, ST_ERR_HEADER_DESERIALIZATION, "expected a string key", i);
          goto done;
        }
        if ((st = scan_string(&s, i, &i)) != ST_OK) goto done;
        count++;
        state = S_COLON;
        continue;
      case S_VALUE_OR_CLOSE:
        if (c == ']') goto close;
        break;
      default:
        break;
    }
    /* A value. */
    if (depth == 0 && c != '{') {
      st = jfail(err, ST_ERR_HEADER_DESERIALIZATION, "the header is not a JSON object", i);
      goto done;
    }
    count++;
    if (c == '{' || c == '[') {
      if (depth >= max_depth) {
        st = jfail(err, ST_ERR_LIMIT, "nesting deeper than the limit", i);
        goto done;
      }
      uint64_t bit = (uint64_t)1 << (depth % 64);
      if (c == '{') stack[depth / 64] |= bit;
      else stack[depth / 64] &= ~bit;
      depth++;
      state = c == '{' ? S_KEY_OR_CLOSE : S_VALUE_OR_CLOSE;
      i++;
      continue;
    }
    if (c == '"') {
      if ((st = scan_string(&s, i, &i)) != ST_OK) goto done;
    } else if (c == '-' || is_digit(c)) {
      if ((st = scan_number(&s, i, &i)) != ST_OK) goto done;
    } else {
      const char *lit = c == 't' ? "true" : c == 'f' ? "false" : c == 'n' ? "null" : NULL;
      size_t len = lit != NULL ? strlen(lit) : 0;
      if (lit == NULL || n - i < len || memcmp(h + i, lit, len) != 0) {
        size_t at = i;
        while (lit != NULL && at < n && at - i < len && h[at] == (unsigned char)lit[at - i]) at++;
        st = jfail(err, ST_ERR_HEADER_DESERIALIZATION, "invalid value", at);
        goto done;
      }
      i += len;
    }
    state = S_AFTER;
    continue;
  close:
    depth--;
    i++;
    state = depth == 0 ? S_END : S_AFTER;
  }
  if (state != S_END) st = jfail(err, ST_ERR_HEADER_DESERIALIZATION, "unexpected end of the header", n);
done:
  if (stack != local) st__free(a, stack);
  *ntok = count;
  return st;
}

/* ---- strings: escapes decoded ------------------------------------------- */

typedef struct strview {
  const unsigned char *s; /* raw bytes between the quotes */
  size_t len;
  size_t pos;             /* header index of s[0] */
} strview;

/* Decodes one character at *i into out (1..4 bytes); *cp gets the code
 * point for escapes (UINT32_MAX for raw bytes). The grammar is checked. */
static size_t decode_one(const strview *v, size_t *i, unsigned char out[4], uint32_t *cp) {
  const unsigned char *s = v->s;
  unsigned c = s[*i];
  *cp = UINT32_MAX;
  if (c != '\\' || *i + 1 >= v->len) {
    out[0] = (unsigned char)c;
    (*i)++;
    return 1;
  }
  unsigned e = s[*i + 1];
  *i += 2;
  switch (e) {
    case 'b': out[0] = '\b'; return 1;
    case 'f': out[0] = '\f'; return 1;
    case 'n': out[0] = '\n'; return 1;
    case 'r': out[0] = '\r'; return 1;
    case 't': out[0] = '\t'; return 1;
    case 'u': break;
    default: out[0] = (unsigned char)e; return 1;
  }
  long u = hex4(s, *i, v->len);
  if (u < 0) u = 0xFFFD;
  else *i += 4;
  uint32_t p = (uint32_t)u;
  if (p >= 0xD800 && p <= 0xDBFF && *i + 1 < v->len && s[*i] == '\\') {
    long lo = hex4(s, *i + 2, v->len);
    if (lo >= 0xDC00 && lo <= 0xDFFF) {
      p = 0x10000 + ((p - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
      *i += 6;
    }
  }
  *cp = p;
  if (p < 0x80) {
    out[0] = (unsigned char)p;
    return 1;
  }
  if (p < 0x800) {
    out[0] = (unsigned char)(0xC0 | (p >> 6));
    out[1] = (unsigned char)(0x80 | (p & 0x3F));
    return 2;
  }
  if (p < 0x10000) {
    out[0] = (unsigned char)(0xE0 | (p >> 12));
    out[1] = (unsigned char)(0x80 | ((p >> 6) & 0x3F));
    out[2] = (unsigned char)(0x80 | (p & 0x3F));
    return 3;
  }
  out[0] = (unsigned char)(0xF0 | (p >> 18));
  out[1] = (unsigned char)(0x80 | ((p >> 12) & 0x3F));
  out[2] = (unsigned char)(0x80 | ((p >> 6) & 0x3F));
  out[3] = (unsigned char)(0x80 | (p & 0x3F));
  return 4;
}

/* Decodes into out (room for v->len + 1 bytes), NUL-terminates, returns the
 * length. *nul_at gets the header index of a decoded U+0000, else SIZE_MAX. */
static size_t decode_into(const strview *v, unsigned char *out, size_t *nul_at) {
  *nul_at = SIZE_MAX;
  if (memchr(v->s, '\\', v->len) == NULL) {
    if (v->len > 0) memcpy(out, v->s, v->len);
    out[v->len] = '\0';
    return v->len;
  }
  size_t i = 0, o = 0;
  while (i < v->len) {
    size_t at = i;
    uint32_t cp;
    o += decode_one(v, &i, out + o, &cp);
    if (cp == 0 && *nul_at == SIZE_MAX) *nul_at = v->pos + at;
  }
  out[o] = '\0';
  return o;
}

/* As nfail, naming a tensor by its raw key: the escapes are decoded for the
 * error record (only the prefix that fits is kept). */
static st_status sfail(st_error *err, st_status code, const char *msg, uint64_t pos,
                       const strview *v) {
  unsigned char buf[ST_ERROR_NAME_CAP + 4];
  size_t i = 0, o = 0, full = 0;
  while (i < v->len) {
    unsigned char one[4];
    uint32_t cp;
    size_t k = decode_one(v, &i, one, &cp);
    if (o + k < ST_ERROR_NAME_CAP) {
      memcpy(buf + o, one, k);
      o += k;
    }
    full += k;
  }
  st_status st = st__fail(err, code, msg, pos, (const char *)buf, o, 0);
  if (err != NULL) err->name_len = full;
  return st;
}

/* Whether the decoded string equals the literal (which has no backslash).
 * Decoding never lengthens a string, so a raw string as long as the literal
 * is equal only byte for byte, a shorter one never, and only a longer one
 * (with escapes) needs decoding. */
static bool str_is(const strview *v, const char *lit) {
  size_t ll = strlen(lit);
  if (v->len <= ll) return v->len == ll && memcmp(v->s, lit, ll) == 0;
  if (memchr(v->s, '\\', v->len) == NULL) return false;
  size_t i = 0, o = 0;
  while (i < v->len) {
    unsigned char buf[4];
    uint32_t cp;
    size_t k = decode_one(v, &i, buf, &cp);
    if (o + k > ll || memcmp(buf, lit + o, k) != 0) return false;
    o += k;
  }
  return o == ll;
}

/* ---- the semantic walk ------------------------------------------------- */

typedef struct walk {
  const unsigned char *h;
  const jsmntok_t *t;
  size_t ntok;
  st_error *err;
} walk;

static strview tok_str(const walk *w, size_t k) {
  strview v;
  v.s = w->h + w->t[k].start;
  v.len = (size_t)(w->t[k].end - w->t[k].start);
  v.pos = (size_t)w->t[k].start;
  return v;
}

/* File offset of a token: the opening quote of a string. */
static uint64_t tok_pos(const walk *w, size_t k) {
  int s = w->t[k].start;
  if (w->t[k].type == JSMN_STRING) s--;
  return (uint64_t)s + HDR;
}

/* Index of the token after the subtree rooted at k. */
static size_t skip(const walk *w, size_t k) {
  if (w->t[k].type != JSMN_OBJECT && w->t[k].type != JSMN_ARRAY) return k + 1;
  int end = w->t[k].end;
  size_t j = k + 1;
  while (j < w->ntok && w->t[j].start < end) j++;
  return j;
}

/* A plain non-negative integer that fits 64 bits. */
static bool tok_u64(const walk *w, size_t k, uint64_t *out) {
  if (w->t[k].type != JSMN_PRIMITIVE) return false;
  const unsigned char *s = w->h + w->t[k].start;
  size_t len = (size_t)(w->t[k].end - w->t[k].start);
  if (len == 0 || (s[0] == '0' && len > 1)) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < len; i++) {
    if (!is_digit(s[i])) return false;
    if (st__mul_overflow_u64(v, 10, &v) || st__add_overflow_u64(v, (uint64_t)(s[i] - '0'), &v)) return false;
  }
  *out = v;
  return true;
}

static int cmp_name(const char *a, size_t al, const char *b, size_t bl) {
  int c = memcmp(a, b, al < bl ? al : bl);
  if (c != 0) return c;
  return al < bl ? -1 : al > bl;
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
  if (w->t[v].type != JSMN_OBJECT)
    return sfail(w->err, ST_ERR_HEADER_DESERIALIZATION, "a tensor entry is not an object",
                 tok_pos(w, v), &name);
  bool have_dtype = false, have_shape = false, have_offsets = false;
  memset(t, 0, sizeof *t);
  t->aux = k;
  t->name_pos = tok_pos(w, k);
  size_t j = v + 1;
  for (int f = 0; f < w->t[v].size; f++) {
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
      if (w->t[fv].type != JSMN_STRING)
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
      if (w->t[fv].type != JSMN_ARRAY)
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
      if (w->t[fv].type != JSMN_ARRAY || w->t[fv].size != 2)
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

/* malloc of n elements, overflow-checked, not zeroed. Large blocks get
 * their page tables populated in one call (MADV_POPULATE_WRITE, best effort):
 * a fault per fresh page is the biggest cost of opening a small file. */
static void *alloc_n(const st_allocator *a, size_t n, size_t size) {
  size_t bytes;
  if (st__mul_overflow_size(n, size, &bytes)) return NULL;
  void *p = st__malloc(a, bytes);
  if (p != NULL && bytes >= ((size_t)64 << 10)) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t b = ((uintptr_t)p + page - 1) & ~(page - 1);
    uintptr_t e = ((uintptr_t)p + bytes) & ~(page - 1);
    if (e > b) (void)madvise((void *)b, e - b, 23 /* MADV_POPULATE_WRITE */);
  }
  return p;
}

static st_status nomem(st_error *err, const char *what) {
  return st__fail(err, ST_ERR_NOMEM, what, ST_NO_OFFSET, NULL, 0, 0);
}

/* Everything after tokenization. */
static st_status build(st_file *f, const walk *w, uint64_t file_size, uint64_t n,
                       const st_open_options *o) {
  st_error *err = w->err;
  const st_allocator *a = f->alloc;
  const jsmntok_t *t = w->t;
  if (w->ntok == 0 || t[0].type != JSMN_OBJECT)
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
      if (t[v].type == JSMN_OBJECT) {
        meta_tok = v;
        size_t j = v + 1;
        for (int e = 0; e < t[v].size; e++) {
          if (j + 1 >= w->ntok || t[j + 1].type != JSMN_STRING)
            return jfail(err, ST_ERR_HEADER_DESERIALIZATION, "a metadata value is not a string",
                         (size_t)(tok_pos(w, j + 1 < w->ntok ? j + 1 : j) - HDR));
          chars += (uint64_t)(t[j].end - t[j].start) + (uint64_t)(t[j + 1].end - t[j + 1].start) + 2;
          j += 2;
        }
      } else if (!(t[v].type == JSMN_PRIMITIVE && w->h[t[v].start] == 'n')) {
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
    f->meta = alloc_n(a, nm, sizeof *f->meta);
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
    f->name_order = alloc_n(a, nt, sizeof *f->name_order);
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
      size_t *pos = alloc_n(a, nt, sizeof *pos);
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

st_status st__header_parse(st_file *f, const unsigned char *header, size_t n,
                           uint64_t file_size, const st_open_options *o,
                           st_error *err) {
  size_t bad = st__utf8_check(header, n);
  if (bad != n) return jfail(err, ST_ERR_INVALID_HEADER, "the header is not valid UTF-8", bad);
  if (n > (size_t)INT_MAX - 16)
    return st__fail(err, ST_ERR_LIMIT, "the header is too large for the tokenizer", 0, NULL, 0, 0);
  size_t ntok = 0;
  st_status st = prescan(header, n, o->max_depth, f->alloc, &ntok, err);
  if (st != ST_OK) return st;
  jsmntok_t *toks = alloc_n(f->alloc, ntok, sizeof *toks);
  if (toks == NULL) return nomem(err, "cannot allocate the token array");
  jsmn_parser p;
  jsmn_init(&p);
  int r = jsmn_parse(&p, (const char *)header, n, toks, (unsigned)ntok);
  if (r < 0 || (size_t)r != ntok) {
    /* The pre-scan accepted the text: a disagreement is our bug, still an
     * error rather than a crash. */
    st = jfail(err, ST_ERR_HEADER_DESERIALIZATION, "the tokenizer rejected the header", p.pos);
  } else {
    walk w = {header, toks, ntok, err};
    st = build(f, &w, file_size, n, o);
  }
  st__free(f->alloc, toks);
  if (st != ST_OK) st__header_free(f);
  return st;
}
