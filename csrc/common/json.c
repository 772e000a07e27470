/* The strict JSON reader. One pass over the text checks everything and fills
 * a token array that grows as needed (sized up front from the text's length,
 * so a header grows it once at most; a counting pre-pass cost more). Nesting is tracked with a
 * bit per level (object or array), so depth costs max_depth / 8 bytes and no
 * recursion; open containers are chained through their `next` field until
 * they close. */
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "common.h"
#include "json.h"

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

typedef struct scanner {
  const unsigned char *h;
  size_t n;
  uint32_t flags;
  st__json_error *err;
} scanner;

static st__json_status fail(const scanner *s, st__json_status code, const char *msg, size_t pos) {
  if (s->err != NULL) {
    s->err->code = code;
    s->err->message = msg;
    s->err->pos = pos;
  }
  return code;
}

#define SYNTAX(s, msg, pos) fail((s), ST__JSON_SYNTAX, (msg), (pos))

/* A string starting at the quote at i; *end gets the index after the
 * closing quote. */
static st__json_status scan_string(const scanner *s, size_t i, size_t *end) {
  const unsigned char *h = s->h;
  size_t n = s->n;
  size_t j = i + 1;
  for (;;) {
    if (j >= n) return SYNTAX(s, "unterminated string", n);
    unsigned c = h[j];
    if (c == '"') break;
    if (c < 0x20) return SYNTAX(s, "control character in a string", j);
    if (c != '\\') {
      j++;
      continue;
    }
    if (j + 1 >= n) return SYNTAX(s, "unterminated string", n);
    switch (h[j + 1]) {
      case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        j += 2;
        break;
      case 'u': {
        long u = hex4(h, j + 2, n);
        if (u < 0) return SYNTAX(s, "invalid \\u escape", j);
        if (u >= 0xDC00 && u <= 0xDFFF) return SYNTAX(s, "lone low surrogate", j);
        if (u >= 0xD800 && u <= 0xDBFF) {
          long lo = -1;
          if (j + 7 < n && h[j + 6] == '\\' && h[j + 7] == 'u') lo = hex4(h, j + 8, n);
          if (lo < 0xDC00 || lo > 0xDFFF) return SYNTAX(s, "lone high surrogate", j);
          j += 12;
        } else {
          j += 6;
        }
        break;
      }
      default:
        return SYNTAX(s, "invalid escape", j);
    }
  }
  *end = j + 1;
  return ST__JSON_OK;
}

/* DBL_MAX. serde_json rejects a number whose value it computes as infinite,
 * anywhere; its conversion is not correctly rounded, so only values within
 * an ulp of DBL_MAX can get a different verdict here. */
static const char f64_max[] = "1797693134862315708145274237317043567980";

/* Whether the number of the given parts is past DBL_MAX in magnitude. */
static bool past_dbl_max(const unsigned char *h, size_t int_begin, size_t int_len,
                         size_t frac_begin, size_t frac_len, int64_t exp) {
  size_t first = SIZE_MAX; /* the first significant digit */
  for (size_t k = 0; k < int_len + frac_len; k++) {
    unsigned d = k < int_len ? h[int_begin + k] : h[frac_begin + k - int_len];
    if (d != '0') {
      first = k;
      break;
    }
  }
  if (first == SIZE_MAX) return false; /* zero */
  /* int_len and first are < 2^31 (the text is), so this cannot wrap. */
  int64_t e10 = (int64_t)int_len - 1 - (int64_t)first + exp;
  if (e10 != 308) return e10 > 308;
  for (size_t k = 0; k < sizeof f64_max - 1; k++) {
    size_t at = first + k;
    unsigned d = at < int_len ? h[int_begin + at]
               : at < int_len + frac_len ? h[frac_begin + at - int_len] : '0';
    if (d != (unsigned char)f64_max[k]) return d > (unsigned char)f64_max[k];
  }
  return false;
}

/* A number starting at i; *end gets the index after it. */
static st__json_status scan_number(const scanner *s, size_t i, size_t *end) {
  const unsigned char *h = s->h;
  size_t n = s->n, j = i;
  if (h[j] == '-') j++;
  if (j >= n || !is_digit(h[j])) return SYNTAX(s, "invalid number", j);
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
    if (j >= n || !is_digit(h[j])) return SYNTAX(s, "invalid number", j);
    while (j < n && is_digit(h[j])) j++;
    frac_end = j;
  }
  int64_t exp = 0;
  if (j < n && (h[j] == 'e' || h[j] == 'E')) {
    j++;
    bool neg = false;
    if (j < n && (h[j] == '+' || h[j] == '-')) neg = h[j++] == '-';
    if (j >= n || !is_digit(h[j])) return SYNTAX(s, "invalid number", j);
    while (j < n && is_digit(h[j])) {
      if (exp < 1000000000) exp = exp * 10 + (h[j] - '0'); /* saturates */
      j++;
    }
    if (neg) exp = -exp;
  }
  *end = j;
  if ((s->flags & ST__JSON_FINITE_NUMBERS) &&
      past_dbl_max(h, int_begin, int_end - int_begin, frac_begin, frac_end - frac_begin, exp))
    return SYNTAX(s, "number out of range", i);
  return ST__JSON_OK;
}

enum { S_VALUE, S_VALUE_OR_CLOSE, S_KEY, S_KEY_OR_CLOSE, S_COLON, S_AFTER, S_END };

#define NONE UINT32_MAX

/* Makes room for token number count in *tok (capacity *cap). */
static bool reserve(const st_allocator *a, st__json_tok **tok, size_t *cap, size_t count) {
  if (count < *cap) return true;
  size_t grown, bytes;
  if (st__mul_overflow_size(*cap, 2, &grown) ||
      st__mul_overflow_size(grown, sizeof **tok, &bytes))
    return false;
  st__json_tok *t = st__realloc(a, *tok, bytes);
  if (t == NULL) return false;
  *tok = t;
  *cap = grown;
  return true;
}

/* The one pass: checks the text and fills *tokp (capacity *capp, grown as
 * needed), setting *ntok. */
static st__json_status scan(const scanner *s, uint32_t max_depth, const st_allocator *a,
                            st__json_tok **tokp, size_t *capp, size_t *ntok) {
  const unsigned char *h = s->h;
  const size_t n = s->n;
  st__json_tok *tok = *tokp;
  uint64_t local[4];
  uint64_t *stack = local; /* one bit per level: 1 = object */
  size_t cap = max_depth < n ? max_depth : n;
  if (cap > 64 * 4) {
    stack = st__malloc(a, (cap / 64 + 1) * sizeof *stack);
    if (stack == NULL) return fail(s, ST__JSON_NOMEM, "cannot allocate the nesting stack", 0);
  }
  st__json_status st = ST__JSON_OK;
  size_t depth = 0, count = 0, i = 0;
  uint32_t open = NONE; /* the innermost open container's token (fill) */
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
        st = SYNTAX(s, "trailing characters after the root value", i);
        goto done;
      case S_COLON:
        if (c != ':') {
          st = SYNTAX(s, "expected ':'", i);
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
        st = SYNTAX(s, in_obj ? "expected ',' or '}'" : "expected ',' or ']'", i);
        goto done;
      case S_KEY_OR_CLOSE:
        if (c == '}') goto close;
        /* fall through */
      case S_KEY: {
        if (c != '"') {
          st = SYNTAX(s, "expected a string key", i);
          goto done;
        }
        size_t e;
        if ((st = scan_string(s, i, &e)) != ST__JSON_OK) goto done;
        if (!reserve(a, tokp, capp, count)) goto nomem;
        tok = *tokp;
        tok[count] = (st__json_tok){ST__JSON_STRING, (uint32_t)i + 1, (uint32_t)e - 1, 1,
                                    (uint32_t)count + 1};
        tok[open].size++;
        count++;
        i = e;
        state = S_COLON;
        continue;
      }
      case S_VALUE_OR_CLOSE:
        if (c == ']') goto close;
        break;
      default:
        break;
    }
    /* A value. */
    if (depth == 0 && c != '{' && (s->flags & ST__JSON_ROOT_OBJECT)) {
      st = SYNTAX(s, "the root is not a JSON object", i);
      goto done;
    }
    if (open != NONE && !in_obj) tok[open].size++;
    if (!reserve(a, tokp, capp, count)) goto nomem;
    tok = *tokp;
    if (c == '{' || c == '[') {
      if (depth >= max_depth) {
        st = fail(s, ST__JSON_DEPTH, "nesting deeper than the limit", i);
        goto done;
      }
      uint64_t bit = (uint64_t)1 << (depth % 64);
      if (c == '{') stack[depth / 64] |= bit;
      else stack[depth / 64] &= ~bit;
      depth++;
      /* next holds the enclosing container until this one closes. */
      tok[count] = (st__json_tok){c == '{' ? ST__JSON_OBJECT : ST__JSON_ARRAY, (uint32_t)i, 0, 0,
                                  open};
      open = (uint32_t)count;
      count++;
      state = c == '{' ? S_KEY_OR_CLOSE : S_VALUE_OR_CLOSE;
      i++;
      continue;
    }
    size_t e = i;
    uint32_t type = ST__JSON_PRIMITIVE;
    if (c == '"') {
      if ((st = scan_string(s, i, &e)) != ST__JSON_OK) goto done;
      type = ST__JSON_STRING;
    } else if (c == '-' || is_digit(c)) {
      if ((st = scan_number(s, i, &e)) != ST__JSON_OK) goto done;
    } else {
      const char *lit = c == 't' ? "true" : c == 'f' ? "false" : c == 'n' ? "null" : NULL;
      size_t len = lit != NULL ? strlen(lit) : 0;
      if (lit == NULL || n - i < len || memcmp(h + i, lit, len) != 0) {
        size_t at = i;
        while (lit != NULL && at < n && at - i < len && h[at] == (unsigned char)lit[at - i]) at++;
        st = SYNTAX(s, "invalid value", at);
        goto done;
      }
      e = i + len;
    }
    {
      bool str = type == ST__JSON_STRING;
      tok[count] = (st__json_tok){type, (uint32_t)(str ? i + 1 : i), (uint32_t)(str ? e - 1 : e), 0,
                                  (uint32_t)count + 1};
    }
    count++;
    i = e;
    state = depth == 0 ? S_END : S_AFTER;
    continue;
  close:
    depth--;
    {
      uint32_t parent = tok[open].next;
      tok[open].end = (uint32_t)i + 1;
      tok[open].next = (uint32_t)count;
      open = parent;
    }
    i++;
    state = depth == 0 ? S_END : S_AFTER;
  }
  if (state != S_END) st = SYNTAX(s, "unexpected end of the text", n);
  goto done;
nomem:
  st = fail(s, ST__JSON_NOMEM, "cannot allocate the token array", i);
done:
  if (stack != local) st__free(a, stack);
  *ntok = count;
  return st;
}

st__json_status st__json_parse(const void *text, size_t len, uint32_t max_depth, uint32_t flags,
                               const st_allocator *alloc, st__json *doc, st__json_error *err) {
  memset(doc, 0, sizeof *doc);
  if (err != NULL) {
    err->code = ST__JSON_OK;
    err->message = "";
    err->pos = 0;
  }
  scanner s = {text, len, flags, err};
  size_t bad = st__utf8_check(s.h, len);
  if (bad != len) return fail(&s, ST__JSON_UTF8, "the text is not valid UTF-8", bad);
  if (len > ST__JSON_MAX_TEXT) return fail(&s, ST__JSON_TOO_LARGE, "the text is too large", 0);
  /* A safetensors header has about one token per 4 bytes, other JSON often
   * far fewer: start at one per 16 and double (untouched capacity costs
   * address space, not memory). */
  size_t ntok = 0, cap = len / 16 + 16, bytes;
  st__json_tok *tok = NULL;
  if (!st__mul_overflow_size(cap, sizeof *tok, &bytes)) tok = st__malloc(alloc, bytes);
  if (tok == NULL) return fail(&s, ST__JSON_NOMEM, "cannot allocate the token array", 0);
  st__json_status st = scan(&s, max_depth, alloc, &tok, &cap, &ntok);
  if (st != ST__JSON_OK) {
    st__free(alloc, tok);
    return st;
  }
  doc->text = s.h;
  doc->len = len;
  doc->tok = tok;
  doc->ntok = ntok;
  doc->alloc = alloc;
  return ST__JSON_OK;
}

void st__json_free(st__json *doc) {
  if (doc == NULL) return;
  st__free(doc->alloc, doc->tok);
  memset(doc, 0, sizeof *doc);
}

/* Decodes one character at raw[*i] into out (1..4 bytes), advancing *i;
 * *cp gets the code point of an escape (UINT32_MAX for raw bytes). */
static size_t decode_one(const unsigned char *raw, size_t len, size_t *i, unsigned char out[4],
                         uint32_t *cp) {
  unsigned c = raw[*i];
  *cp = UINT32_MAX;
  if (c != '\\' || *i + 1 >= len) {
    out[0] = (unsigned char)c;
    (*i)++;
    return 1;
  }
  unsigned e = raw[*i + 1];
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
  long u = hex4(raw, *i, len);
  if (u < 0) u = 0xFFFD;
  else *i += 4;
  uint32_t p = (uint32_t)u;
  if (p >= 0xD800 && p <= 0xDBFF && *i + 1 < len && raw[*i] == '\\') {
    long lo = hex4(raw, *i + 2, len);
    if (lo >= 0xDC00 && lo <= 0xDFFF) {
      p = 0x10000 + ((p - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
      *i += 6;
    }
  }
  *cp = p;
  return st__utf8_put(out, p);
}

size_t st__json_unescape(const unsigned char *raw, size_t len, unsigned char *out, size_t cap,
                         size_t *written, size_t *nul_at) {
  if (nul_at != NULL) *nul_at = SIZE_MAX;
  size_t o = 0, full = 0;
  if (memchr(raw, '\\', len) == NULL) {
    o = len < cap ? len : cap;
    if (o > 0) memcpy(out, raw, o);
    full = len;
  } else {
    size_t i = 0;
    while (i < len) {
      size_t at = i;
      unsigned char one[4];
      uint32_t cp;
      size_t k = decode_one(raw, len, &i, one, &cp);
      if (cp == 0 && nul_at != NULL && *nul_at == SIZE_MAX) *nul_at = at;
      if (o == full && o + k <= cap) {
        memcpy(out + o, one, k);
        o += k;
      }
      full += k;
    }
  }
  if (o < cap) out[o] = '\0';
  if (written != NULL) *written = o;
  return full;
}

size_t st__json_string(const st__json *doc, size_t k, unsigned char *out, size_t cap,
                       size_t *written, size_t *nul_at) {
  size_t len;
  const unsigned char *raw = st__json_raw(doc, k, &len);
  return st__json_unescape(raw, len, out, cap, written, nul_at);
}

/* Decoding never lengthens a string, so a raw string as long as the literal
 * is equal only byte for byte, a shorter one never, and only a longer one
 * (with escapes) needs decoding. */
bool st__json_unescaped_is(const unsigned char *raw, size_t len, const char *lit, size_t ll) {
  if (len <= ll) return len == ll && memcmp(raw, lit, ll) == 0;
  if (memchr(raw, '\\', len) == NULL) return false;
  size_t i = 0, o = 0;
  while (i < len) {
    unsigned char buf[4];
    uint32_t cp;
    size_t k = decode_one(raw, len, &i, buf, &cp);
    if (o + k > ll || memcmp(buf, lit + o, k) != 0) return false;
    o += k;
  }
  return o == ll;
}

bool st__json_string_is(const st__json *doc, size_t k, const char *lit, size_t lit_len) {
  size_t len;
  if (doc->tok[k].type != ST__JSON_STRING) return false;
  const unsigned char *raw = st__json_raw(doc, k, &len);
  return st__json_unescaped_is(raw, len, lit, lit_len);
}

bool st__json_u64(const st__json *doc, size_t k, uint64_t *out) {
  if (doc->tok[k].type != ST__JSON_PRIMITIVE) return false;
  size_t len;
  const unsigned char *s = st__json_raw(doc, k, &len);
  if (len == 0 || (s[0] == '0' && len > 1)) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < len; i++) {
    if (!is_digit(s[i])) return false;
    if (st__mul_overflow_u64(v, 10, &v) || st__add_overflow_u64(v, (uint64_t)(s[i] - '0'), &v))
      return false;
  }
  *out = v;
  return true;
}

bool st__json_is_null(const st__json *doc, size_t k) {
  return doc->tok[k].type == ST__JSON_PRIMITIVE && doc->text[doc->tok[k].start] == 'n';
}

typedef struct dkey {
  const unsigned char *s; /* decoded, in the arena */
  size_t len;
  size_t tok;
} dkey;

static int cmp_dkey(const void *pa, const void *pb) {
  const dkey *a = pa, *b = pb;
  int c = st__bytes_cmp(a->s, a->len, b->s, b->len);
  if (c != 0) return c;
  return a->tok < b->tok ? -1 : a->tok > b->tok;
}

st__json_status st__json_find_duplicate(const st__json *doc, size_t obj, size_t *dup) {
  *dup = SIZE_MAX;
  size_t n = doc->tok[obj].size;
  if (n < 2) return ST__JSON_OK;
  /* Decoded keys are never longer than raw ones: the raw span bounds the
   * arena. */
  size_t arena_size = (size_t)(doc->tok[obj].end - doc->tok[obj].start);
  dkey *keys = st__calloc(doc->alloc, n, sizeof *keys);
  unsigned char *arena = st__malloc(doc->alloc, arena_size);
  if (keys == NULL || arena == NULL) {
    st__free(doc->alloc, keys);
    st__free(doc->alloc, arena);
    return ST__JSON_NOMEM;
  }
  size_t at = 0, k = obj + 1;
  for (size_t m = 0; m < n; m++) {
    size_t raw_len, w;
    (void)st__json_raw(doc, k, &raw_len);
    (void)st__json_string(doc, k, arena + at, raw_len, &w, NULL);
    keys[m] = (dkey){arena + at, w, k};
    at += w;
    k = doc->tok[k + 1].next;
  }
  qsort(keys, n, sizeof *keys, cmp_dkey);
  for (size_t m = 1; m < n; m++) {
    if (st__bytes_cmp(keys[m - 1].s, keys[m - 1].len, keys[m].s, keys[m].len) == 0) {
      if (*dup == SIZE_MAX || keys[m].tok < *dup) *dup = keys[m].tok;
    }
  }
  st__free(doc->alloc, keys);
  st__free(doc->alloc, arena);
  return ST__JSON_OK;
}

static void put_u4(st__json_put_fn put, void *ctx, uint32_t u) {
  static const char hex[] = "0123456789abcdef";
  char e[6] = {'\\', 'u', hex[(u >> 12) & 15], hex[(u >> 8) & 15], hex[(u >> 4) & 15],
               hex[u & 15]};
  put(ctx, e, sizeof e);
}

void st__json_escape(const char *s, size_t len, uint32_t flags, st__json_put_fn put,
                     void *ctx) {
  const unsigned char *u = (const unsigned char *)s;
  const bool decode = (flags & (ST__JSON_ESCAPE_ASCII | ST__JSON_ESCAPE_REPLACE)) != 0;
  size_t run = 0, i = 0; /* s[run..i) is pending, unescaped */
  put(ctx, "\"", 1);
  while (i < len) {
    unsigned c = u[i];
    size_t n = 1;
    uint32_t cp = c;
    if (c >= 0x80 && decode) {
      n = st__utf8_decode(u + i, len - i, &cp);
      if (n == 0) { /* not UTF-8 */
        n = 1;
        if (!(flags & ST__JSON_ESCAPE_REPLACE)) {
          i++;
          continue;
        }
        cp = 0xFFFD;
      } else if (!(flags & ST__JSON_ESCAPE_ASCII)) {
        i += n;
        continue;
      }
    } else if (c >= 0x20 && c != '"' && c != '\\' &&
               (c < 0x7f || !(flags & ST__JSON_ESCAPE_ASCII))) {
      i++;
      continue;
    }
    put(ctx, s + run, i - run);
    const char *esc = cp == '"' ? "\\\"" : cp == '\\' ? "\\\\" : cp == '\b' ? "\\b"
                    : cp == '\f' ? "\\f" : cp == '\n' ? "\\n" : cp == '\r' ? "\\r"
                    : cp == '\t' ? "\\t" : NULL;
    if (esc != NULL) {
      put(ctx, esc, 2);
    } else if (cp > 0xFFFF) {
      put_u4(put, ctx, 0xD800 + ((cp - 0x10000) >> 10));
      put_u4(put, ctx, 0xDC00 + ((cp - 0x10000) & 0x3FF));
    } else {
      put_u4(put, ctx, cp);
    }
    i += n;
    run = i;
  }
  put(ctx, s + run, len - run);
  put(ctx, "\"", 1);
}
