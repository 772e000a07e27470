/* Reads a sharded checkpoint's model.safetensors.index.json. The file is as
 * untrusted as a checkpoint: it goes through the project's strict JSON reader
 * (csrc/common/json.h: the whole grammar, UTF-8, escapes, a nesting limit)
 * before any value is used. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "common/common.h"
#include "common/json.h"

/* The JSON reader keeps positions in 32 bits; index files are far smaller
 * in practice. */
#define INDEX_MAX_BYTES (512u * 1024u * 1024u)
/* Nesting is not limited (unknown fields may nest deeply): the reader's bit
 * per level is bounded by the text's length, and nothing recurses. */
#define INDEX_MAX_DEPTH UINT32_MAX

typedef struct ctx {
  const st__json *doc;
  char *msg;
  size_t msg_cap;
  uint64_t *offset;
} ctx;

static int fail_at(ctx *c, size_t pos, const char *msg) {
  snprintf(c->msg, c->msg_cap, "%s", msg);
  *c->offset = (uint64_t)pos;
  return ST_CLI_INVALID;
}

static st__cli_str take_string(const ctx *c, size_t k) {
  st__cli_str s;
  size_t raw_len;
  (void)st__json_raw(c->doc, k, &raw_len);
  s.p = st__cli_xmalloc(raw_len + 1);
  s.len = st__json_string(c->doc, k, (unsigned char *)s.p, raw_len + 1, NULL, NULL);
  return s;
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
  return st__bytes_cmp(x->p, x->len, y->p, y->len);
}

/* Duplicate keys: the JSON reader's choice would decide which value a
 * loader uses, so refuse them as the file reader does. */
static int check_dups(ctx *c, size_t obj, const char *what) {
  size_t dup;
  if (st__json_find_duplicate(c->doc, obj, &dup) != ST__JSON_OK) {
    snprintf(c->msg, c->msg_cap, "out of memory");
    return ST_CLI_ERROR;
  }
  return dup == SIZE_MAX ? ST_CLI_OK : fail_at(c, st__json_pos(c->doc, dup), what);
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

static int load_metadata(ctx *c, size_t v, st__cli_index *out) {
  const st__json *d = c->doc;
  if (d->tok[v].type != ST__JSON_OBJECT)
    return fail_at(c, st__json_pos(d, v), "\"metadata\" is not an object");
  size_t cap = d->tok[v].size;
  out->meta_keys = st__cli_xmalloc(cap * sizeof *out->meta_keys);
  out->meta_raw = st__cli_xmalloc(cap * sizeof *out->meta_raw);
  for (size_t m = 0, j = v + 1; m < cap; m++, j = d->tok[j + 1].next) {
    size_t val = j + 1;
    size_t b = st__json_pos(d, val);
    size_t e = d->tok[val].end + (d->tok[val].type == ST__JSON_STRING ? 1u : 0u);
    st__cli_str raw;
    raw.len = e - b;
    raw.p = st__cli_xmalloc(raw.len + 1);
    memcpy(raw.p, d->text + b, raw.len);
    raw.p[raw.len] = '\0';
    if (st__json_string_is(d, j, "total_size", 10) && st__json_u64(d, val, &out->total_size))
      out->has_total_size = 1;
    out->meta_keys[out->meta_count] = take_string(c, j);
    out->meta_raw[out->meta_count++] = raw;
  }
  return check_dups(c, v, "duplicate key in index metadata");
}

static int load_weight_map(ctx *c, size_t v, st__cli_index *out) {
  const st__json *d = c->doc;
  if (d->tok[v].type != ST__JSON_OBJECT)
    return fail_at(c, st__json_pos(d, v), "\"weight_map\" is not an object");
  size_t cap = d->tok[v].size;
  out->tensors = st__cli_xmalloc(cap * sizeof *out->tensors);
  out->shards = st__cli_xmalloc(cap * sizeof *out->shards);
  for (size_t m = 0, j = v + 1; m < cap; m++, j = d->tok[j + 1].next) {
    size_t val = j + 1;
    if (d->tok[val].type != ST__JSON_STRING)
      return fail_at(c, st__json_pos(d, val), "weight_map value is not a string");
    out->tensors[out->count] = take_string(c, j);
    out->shards[out->count] = take_string(c, val);
    out->count++;
    if (!shard_name_ok(&out->shards[out->count - 1]))
      return fail_at(c, st__json_pos(d, val),
                     "weight_map names a shard outside the index's folder");
  }
  return check_dups(c, v, "duplicate tensor in weight_map");
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
  st__json doc;
  st__json_error je;
  ctx c = {&doc, msg, msg_cap, offset};
  memset(out, 0, sizeof *out);
  memset(&doc, 0, sizeof doc);
  *offset = UINT64_MAX;
  int rc = read_file(path, &js, &len, msg, msg_cap);
  if (rc != ST_CLI_OK) return rc;
  st__json_status js_st = st__json_parse(js, len, INDEX_MAX_DEPTH, 0, NULL, &doc, &je);
  if (js_st != ST__JSON_OK) {
    rc = fail_at(&c, je.pos, je.message);
    if (js_st == ST__JSON_NOMEM) rc = ST_CLI_ERROR;
    goto done;
  }
  if (doc.tok[0].type != ST__JSON_OBJECT) {
    rc = fail_at(&c, st__json_pos(&doc, 0), "index root is not an object");
    goto done;
  }
  if ((rc = check_dups(&c, 0, "duplicate key in index")) != ST_CLI_OK) goto done;
  int seen_map = 0;
  for (size_t m = 0, j = 1; m < doc.tok[0].size; m++, j = doc.tok[j + 1].next) {
    if (st__json_string_is(&doc, j, "metadata", 8)) {
      /* null metadata counts as absent, as in the format's __metadata__. */
      if (!st__json_is_null(&doc, j + 1) && (rc = load_metadata(&c, j + 1, out)) != ST_CLI_OK)
        goto done;
    } else if (st__json_string_is(&doc, j, "weight_map", 10)) {
      seen_map = 1;
      if ((rc = load_weight_map(&c, j + 1, out)) != ST_CLI_OK) goto done;
    }
  }
  if (!seen_map) {
    rc = fail_at(&c, 0, "index has no \"weight_map\"");
    goto done;
  }
  group_shards(out);
done:
  st__json_free(&doc);
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

int st__cli_is_index(const char *path) {
  size_t n = strlen(path), m = strlen(".json");
  return n >= m && strcmp(path + n - m, ".json") == 0;
}

char *st__cli_shard_path(const char *index_path, const char *name) {
  const char *slash = strrchr(index_path, '/');
  size_t dir = slash ? (size_t)(slash - index_path) + 1 : 0;
  size_t n = strlen(name);
  char *p = st__cli_xmalloc(dir + n + 1);
  memcpy(p, index_path, dir);
  memcpy(p + dir, name, n + 1);
  return p;
}
