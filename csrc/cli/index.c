/* Reads a sharded checkpoint's model.safetensors.index.json. The file is as
 * untrusted as a checkpoint: jsmn only tokenizes (and is lenient about the
 * text between tokens), so every separator, string and literal is checked
 * here against the JSON grammar before any value is used. */
#define JSMN_STATIC
#define JSMN_STRICT
/* Parent links make closing brackets and commas O(1); without them jsmn
 * scans back over every earlier token (quadratic on a big weight_map). */
#define JSMN_PARENT_LINKS
#include <jsmn.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

/* jsmn keeps positions in int; index files are far smaller in practice. */
#define INDEX_MAX_BYTES (512u * 1024u * 1024u)

typedef struct ctx {
  const char *js;
  size_t len;
  char *msg;
  size_t msg_cap;
  uint64_t *offset;
} ctx;

static int fail_at(ctx *c, size_t pos, const char *msg) {
  snprintf(c->msg, c->msg_cap, "%s", msg);
  *c->offset = (uint64_t)pos;
  return ST_CLI_INVALID;
}

static size_t skip_ws(const char *js, size_t len, size_t pos) {
  while (pos < len && (js[pos] == ' ' || js[pos] == '\t' || js[pos] == '\n' ||
                       js[pos] == '\r'))
    pos++;
  return pos;
}

static int hexval(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

static int read_hex4(const char *s, uint32_t *v) {
  uint32_t r = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexval(s[i]);
    if (h < 0) return -1;
    r = (r << 4) | (uint32_t)h;
  }
  *v = r;
  return 0;
}

static size_t put_utf8(char *o, uint32_t cp) {
  if (cp < 0x80) {
    o[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (char)(0xC0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | (cp >> 18));
  o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Length of a well-formed UTF-8 sequence at s, 0 if there is none. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF)
    return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && s[1] < 0xA0) return 0; /* overlong */
    if (c == 0xED && s[1] >= 0xA0) return 0; /* surrogate */
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 ||
        (s[3] & 0xC0) != 0x80)
      return 0;
    if (c == 0xF0 && s[1] < 0x90) return 0; /* overlong */
    if (c == 0xF4 && s[1] >= 0x90) return 0; /* past U+10FFFF */
    return 4;
  }
  return 0;
}

/* Checks and decodes the string body js[b..e) into out (capacity >= e - b
 * + 1, or NULL to only check). */
static int decode_string(ctx *c, size_t b, size_t e, char *out,
                         size_t *out_len) {
  const char *js = c->js;
  size_t o = 0, i = b;
  while (i < e) {
    unsigned char ch = (unsigned char)js[i];
    if (ch < 0x20) return fail_at(c, i, "control character in a string");
    if (ch != '\\') {
      size_t n = utf8_len((const unsigned char *)js + i, e - i);
      if (n == 0) return fail_at(c, i, "invalid UTF-8 in a string");
      if (out) memcpy(out + o, js + i, n);
      o += n;
      i += n;
      continue;
    }
    if (i + 1 >= e) return fail_at(c, i, "bad escape in a string");
    char esc = js[i + 1], lit = 0;
    switch (esc) {
      case '"': lit = '"'; break;
      case '\\': lit = '\\'; break;
      case '/': lit = '/'; break;
      case 'b': lit = '\b'; break;
      case 'f': lit = '\f'; break;
      case 'n': lit = '\n'; break;
      case 'r': lit = '\r'; break;
      case 't': lit = '\t'; break;
      case 'u': break;
      default: return fail_at(c, i, "bad escape in a string");
    }
    if (esc != 'u') {
      if (out) out[o] = lit;
      o++;
      i += 2;
      continue;
    }
    uint32_t cp, lo;
    if (e - i < 6 || read_hex4(js + i + 2, &cp) != 0)
      return fail_at(c, i, "bad \\u escape in a string");
    if (cp >= 0xDC00 && cp <= 0xDFFF)
      return fail_at(c, i, "lone surrogate in a string");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (e - i < 12 || js[i + 6] != '\\' || js[i + 7] != 'u' ||
          read_hex4(js + i + 8, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
        return fail_at(c, i, "lone surrogate in a string");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      i += 12;
    } else {
      i += 6;
    }
    char tmp[4];
    size_t n = put_utf8(tmp, cp);
    if (out) memcpy(out + o, tmp, n);
    o += n;
  }
  if (out) out[o] = '\0';
  if (out_len) *out_len = o;
  return ST_CLI_OK;
}

static int check_primitive(ctx *c, size_t b, size_t e) {
  const char *s = c->js + b;
  size_t n = e - b, i = 0;
  if ((n == 4 && memcmp(s, "true", 4) == 0) ||
      (n == 5 && memcmp(s, "false", 5) == 0) ||
      (n == 4 && memcmp(s, "null", 4) == 0))
    return ST_CLI_OK;
  if (i < n && s[i] == '-') i++;
  if (i >= n) return fail_at(c, b, "invalid literal");
  if (s[i] == '0') {
    i++;
  } else if (s[i] >= '1' && s[i] <= '9') {
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
  } else {
    return fail_at(c, b, "invalid literal");
  }
  if (i < n && s[i] == '.') {
    size_t d = ++i;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    if (i == d) return fail_at(c, b, "invalid number");
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    size_t d = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    if (i == d) return fail_at(c, b, "invalid number");
  }
  if (i != n) return fail_at(c, b + i, "invalid number");
  return ST_CLI_OK;
}

/* Start of a token's text, quotes included. */
static size_t tok_begin(const jsmntok_t *t) {
  return (size_t)t->start - (t->type == JSMN_STRING ? 1u : 0u);
}

/* The grammar between tokens, with an explicit stack (no recursion driven
 * by input). Tokens come in document order. */
static int check_grammar(ctx *c, const jsmntok_t *t, size_t n) {
  const char *js = c->js;
  size_t len = c->len, pos = skip_ws(js, len, 0), i = 0, depth = 0;
  size_t *stack = st__cli_xmalloc(n * sizeof *stack);
  int want_key = 0, rc = ST_CLI_OK;
  for (;;) {
    if (i >= n) {
      rc = fail_at(c, pos, "unexpected end of JSON");
      break;
    }
    const jsmntok_t *k = &t[i];
    if (k->start < 0 || k->end < k->start || (size_t)k->end > len ||
        tok_begin(k) != pos) {
      rc = fail_at(c, pos, "unexpected character");
      break;
    }
    if (want_key) {
      if (k->type != JSMN_STRING) {
        rc = fail_at(c, pos, "object key is not a string");
        break;
      }
      if ((rc = decode_string(c, (size_t)k->start, (size_t)k->end, NULL,
                              NULL)) != ST_CLI_OK)
        break;
      pos = skip_ws(js, len, (size_t)k->end + 1);
      if (pos >= len || js[pos] != ':') {
        rc = fail_at(c, pos, "expected ':'");
        break;
      }
      pos = skip_ws(js, len, pos + 1);
      want_key = 0;
      i++;
      continue;
    }
    if (k->type == JSMN_OBJECT || k->type == JSMN_ARRAY) {
      char close = k->type == JSMN_OBJECT ? '}' : ']';
      stack[depth++] = i++;
      pos = skip_ws(js, len, pos + 1);
      if (pos < len && js[pos] == close) {
        if (pos + 1 != (size_t)k->end) {
          rc = fail_at(c, pos, "mismatched bracket");
          break;
        }
        pos++;
        depth--;
      } else {
        want_key = k->type == JSMN_OBJECT;
        continue;
      }
    } else if (k->type == JSMN_STRING) {
      if ((rc = decode_string(c, (size_t)k->start, (size_t)k->end, NULL,
                              NULL)) != ST_CLI_OK)
        break;
      pos = (size_t)k->end + 1;
      i++;
    } else if (k->type == JSMN_PRIMITIVE) {
      if ((rc = check_primitive(c, (size_t)k->start, (size_t)k->end)) !=
          ST_CLI_OK)
        break;
      pos = (size_t)k->end;
      i++;
    } else {
      rc = fail_at(c, pos, "unexpected token");
      break;
    }
    /* A value ended: close containers or move on to the next element. */
    int next = 0;
    while (!next) {
      pos = skip_ws(js, len, pos);
      if (depth == 0) {
        if (pos != len) rc = fail_at(c, pos, "trailing characters after JSON");
        else if (i != n) rc = fail_at(c, pos, "unexpected token");
        break;
      }
      const jsmntok_t *box = &t[stack[depth - 1]];
      char close = box->type == JSMN_OBJECT ? '}' : ']';
      if (pos < len && js[pos] == ',') {
        pos = skip_ws(js, len, pos + 1);
        want_key = box->type == JSMN_OBJECT;
        next = 1;
      } else if (pos < len && js[pos] == close && pos + 1 == (size_t)box->end) {
        pos++;
        depth--;
      } else {
        rc = fail_at(c, pos, "expected ',' or a closing bracket");
        break;
      }
    }
    if (!next) break;
  }
  free(stack);
  return rc;
}

/* Index of the token after the value at i (its whole subtree skipped). */
static size_t skip_value(const jsmntok_t *t, size_t n, size_t i) {
  int end = t[i].end;
  size_t j = i + 1;
  while (j < n && t[j].start < end) j++;
  return j;
}

static st__cli_str take_string(ctx *c, const jsmntok_t *k) {
  st__cli_str s;
  size_t b = (size_t)k->start, e = (size_t)k->end;
  s.p = st__cli_xmalloc(e - b + 1);
  /* Already checked by check_grammar: decoding cannot fail here. */
  if (decode_string(c, b, e, s.p, &s.len) != ST_CLI_OK) s.len = 0;
  return s;
}

static int parse_u64(const char *s, size_t n, uint64_t *out) {
  uint64_t v = 0;
  if (n == 0 || (n > 1 && s[0] == '0')) return -1;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return -1;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

/* A shard is named relative to the index's folder: never absolute, never
 * climbing out of it, never hiding a NUL from the C string APIs. */
static int shard_name_ok(const st__cli_str *s) {
  if (s->len == 0 || memchr(s->p, '\0', s->len) || s->p[0] == '/') return 0;
  const char *p = s->p, *end = s->p + s->len;
  while (p < end) {
    const char *slash = memchr(p, '/', (size_t)(end - p));
    size_t seg = (size_t)((slash ? slash : end) - p);
    if (seg == 2 && p[0] == '.' && p[1] == '.') return 0;
    p += seg + 1;
  }
  return 1;
}

static const st__cli_str *g_sort_names;

static int cmp_name(const void *a, const void *b) {
  const st__cli_str *x = &g_sort_names[*(const size_t *)a];
  const st__cli_str *y = &g_sort_names[*(const size_t *)b];
  size_t m = x->len < y->len ? x->len : y->len;
  int r = memcmp(x->p, y->p, m);
  if (r) return r;
  return x->len < y->len ? -1 : x->len > y->len;
}

static size_t count_members(const jsmntok_t *t, size_t n, size_t v) {
  size_t count = 0, j = v + 1;
  while (j < n && t[j].start < t[v].end) {
    count++;
    j = skip_value(t, n, j + 1);
  }
  return count;
}

/* Duplicate keys: the JSON reader's choice would decide which value a
 * loader uses, so refuse them as the file reader does. */
static int check_dups(ctx *c, const st__cli_str *names, size_t count,
                      const size_t *key_pos, const char *what) {
  int rc = ST_CLI_OK;
  if (count < 2) return rc;
  size_t *order = st__cli_xmalloc(count * sizeof *order);
  for (size_t i = 0; i < count; i++) order[i] = i;
  g_sort_names = names;
  qsort(order, count, sizeof *order, cmp_name);
  for (size_t i = 1; i < count; i++) {
    if (cmp_name(&order[i - 1], &order[i]) == 0) {
      size_t later = order[i] > order[i - 1] ? order[i] : order[i - 1];
      rc = fail_at(c, key_pos[later], what);
      break;
    }
  }
  free(order);
  return rc;
}

static int read_file(const char *path, char **data, size_t *size, char *msg,
                     size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0) {
    snprintf(msg, cap, "cannot open: %s", strerror(errno));
    return ST_CLI_ERROR;
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    snprintf(msg, cap, "not a regular file");
    close(fd);
    return ST_CLI_ERROR;
  }
  if ((uint64_t)st.st_size > INDEX_MAX_BYTES) {
    snprintf(msg, cap, "index file larger than %u bytes", INDEX_MAX_BYTES);
    close(fd);
    return ST_CLI_INVALID;
  }
  size_t n = (size_t)st.st_size, got = 0;
  char *buf = st__cli_xmalloc(n + 1);
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      snprintf(msg, cap, "read failed: %s", strerror(errno));
      free(buf);
      close(fd);
      return ST_CLI_ERROR;
    }
    if (r == 0) break; /* shrank meanwhile: parse what is there */
    got += (size_t)r;
  }
  close(fd);
  buf[got] = '\0';
  *data = buf;
  *size = got;
  return ST_CLI_OK;
}

static int load_tokens(ctx *c, jsmntok_t **out, size_t *count) {
  jsmn_parser p;
  jsmn_init(&p);
  int n = jsmn_parse(&p, c->js, c->len, NULL, 0);
  if (n <= 0) return fail_at(c, n == 0 ? 0 : p.pos, "not valid JSON");
  jsmntok_t *t = st__cli_xmalloc((size_t)n * sizeof *t);
  jsmn_init(&p);
  int m = jsmn_parse(&p, c->js, c->len, t, (unsigned)n);
  if (m != n) {
    free(t);
    return fail_at(c, p.pos, "not valid JSON");
  }
  *out = t;
  *count = (size_t)n;
  return ST_CLI_OK;
}

static int load_metadata(ctx *c, const jsmntok_t *t, size_t n, size_t v,
                         st__cli_index *out) {
  if (t[v].type != JSMN_OBJECT)
    return fail_at(c, (size_t)t[v].start, "\"metadata\" is not an object");
  size_t cap = count_members(t, n, v);
  size_t *key_pos = st__cli_xmalloc(cap * sizeof *key_pos);
  out->meta_keys = st__cli_xmalloc(cap * sizeof *out->meta_keys);
  out->meta_raw = st__cli_xmalloc(cap * sizeof *out->meta_raw);
  size_t j = v + 1;
  while (j < n && t[j].start < t[v].end && out->meta_count < cap) {
    const jsmntok_t *val = &t[j + 1];
    st__cli_str raw;
    size_t b = tok_begin(val);
    size_t e = (size_t)val->end + (val->type == JSMN_STRING ? 1u : 0u);
    raw.len = e - b;
    raw.p = st__cli_xmalloc(raw.len + 1);
    memcpy(raw.p, c->js + b, raw.len);
    raw.p[raw.len] = '\0';
    st__cli_str key = take_string(c, &t[j]);
    key_pos[out->meta_count] = tok_begin(&t[j]);
    if (key.len == 10 && memcmp(key.p, "total_size", 10) == 0 &&
        val->type == JSMN_PRIMITIVE &&
        parse_u64(raw.p, raw.len, &out->total_size) == 0)
      out->has_total_size = 1;
    out->meta_keys[out->meta_count] = key;
    out->meta_raw[out->meta_count++] = raw;
    j = skip_value(t, n, j + 1);
  }
  int rc = check_dups(c, out->meta_keys, out->meta_count, key_pos,
                      "duplicate key in index metadata");
  free(key_pos);
  return rc;
}

static int load_weight_map(ctx *c, const jsmntok_t *t, size_t n, size_t v,
                           st__cli_index *out) {
  if (t[v].type != JSMN_OBJECT)
    return fail_at(c, (size_t)t[v].start, "\"weight_map\" is not an object");
  size_t cap = count_members(t, n, v);
  size_t *key_pos = st__cli_xmalloc(cap * sizeof *key_pos);
  out->tensors = st__cli_xmalloc(cap * sizeof *out->tensors);
  out->shards = st__cli_xmalloc(cap * sizeof *out->shards);
  int rc = ST_CLI_OK;
  size_t j = v + 1;
  while (j < n && t[j].start < t[v].end && out->count < cap) {
    const jsmntok_t *val = &t[j + 1];
    if (val->type != JSMN_STRING) {
      rc = fail_at(c, tok_begin(val), "weight_map value is not a string");
      break;
    }
    key_pos[out->count] = tok_begin(&t[j]);
    out->tensors[out->count] = take_string(c, &t[j]);
    out->shards[out->count] = take_string(c, val);
    out->count++;
    if (!shard_name_ok(&out->shards[out->count - 1])) {
      rc = fail_at(c, tok_begin(val),
                   "weight_map names a shard outside the index's folder");
      break;
    }
    j = j + 2;
  }
  if (rc == ST_CLI_OK)
    rc = check_dups(c, out->tensors, out->count, key_pos,
                    "duplicate tensor in weight_map");
  free(key_pos);
  return rc;
}

/* Distinct shard names in byte-wise order, and each entry's shard. */
static void group_shards(st__cli_index *idx) {
  size_t n = idx->count;
  size_t *order = st__cli_xmalloc(n * sizeof *order);
  idx->shard_of = st__cli_xmalloc(n * sizeof *idx->shard_of);
  idx->shard_names = st__cli_xmalloc(n * sizeof *idx->shard_names);
  for (size_t i = 0; i < n; i++) order[i] = i;
  g_sort_names = idx->shards;
  qsort(order, n, sizeof *order, cmp_name);
  for (size_t i = 0; i < n; i++) {
    if (i == 0 || cmp_name(&order[i - 1], &order[i]) != 0)
      idx->shard_names[idx->shard_count++] = idx->shards[order[i]];
    idx->shard_of[order[i]] = idx->shard_count - 1;
  }
  free(order);
}

int st__cli_index_load(const char *path, st__cli_index *out, char *msg,
                       size_t msg_cap, uint64_t *offset) {
  char *js = NULL;
  size_t len = 0;
  jsmntok_t *t = NULL;
  size_t n = 0;
  ctx c = {NULL, 0, msg, msg_cap, offset};
  memset(out, 0, sizeof *out);
  *offset = UINT64_MAX;
  int rc = read_file(path, &js, &len, msg, msg_cap);
  if (rc != ST_CLI_OK) return rc;
  c.js = js;
  c.len = len;
  if ((rc = load_tokens(&c, &t, &n)) != ST_CLI_OK) goto done;
  if ((rc = check_grammar(&c, t, n)) != ST_CLI_OK) goto done;
  if (t[0].type != JSMN_OBJECT) {
    rc = fail_at(&c, tok_begin(&t[0]), "index root is not an object");
    goto done;
  }
  int seen_meta = 0, seen_map = 0;
  size_t j = 1;
  while (j < n && t[j].start < t[0].end) {
    st__cli_str key = take_string(&c, &t[j]);
    int is_meta = key.len == 8 && memcmp(key.p, "metadata", 8) == 0;
    int is_map = key.len == 10 && memcmp(key.p, "weight_map", 10) == 0;
    free(key.p);
    if ((is_meta && seen_meta) || (is_map && seen_map)) {
      rc = fail_at(&c, tok_begin(&t[j]), "duplicate key in index");
      goto done;
    }
    if (is_meta) {
      seen_meta = 1;
      /* null metadata counts as absent, as in the format's __metadata__. */
      if (!(t[j + 1].type == JSMN_PRIMITIVE && c.js[t[j + 1].start] == 'n') &&
          (rc = load_metadata(&c, t, n, j + 1, out)) != ST_CLI_OK)
        goto done;
    } else if (is_map) {
      seen_map = 1;
      if ((rc = load_weight_map(&c, t, n, j + 1, out)) != ST_CLI_OK) goto done;
    }
    j = skip_value(t, n, j + 1);
  }
  if (!seen_map) {
    rc = fail_at(&c, 0, "index has no \"weight_map\"");
    goto done;
  }
  group_shards(out);
done:
  free(t);
  free(js);
  if (rc != ST_CLI_OK) st__cli_index_free(out);
  return rc;
}

static void free_strs(st__cli_str *s, size_t n) {
  if (!s) return;
  for (size_t i = 0; i < n; i++) free(s[i].p);
  free(s);
}

void st__cli_index_free(st__cli_index *idx) {
  free_strs(idx->tensors, idx->count);
  free_strs(idx->shards, idx->count);
  free_strs(idx->meta_keys, idx->meta_count);
  free_strs(idx->meta_raw, idx->meta_count);
  free(idx->shard_names);
  free(idx->shard_of);
  memset(idx, 0, sizeof *idx);
}
