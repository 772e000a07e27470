/* `safetensors inspect`: the tensor table, metadata and totals of one file
 * or of every shard of an HF sharded checkpoint. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Text mode shows at most this much of one metadata value. */
#define META_TEXT_MAX 256u
/* Wider names overflow their column instead of widening the whole table. */
#define NAME_COL_MAX 64u
/* Output is flushed in pieces so a 1.7M-tensor table needs little memory. */
#define FLUSH_AT (1u << 20)

typedef struct totals {
  uint64_t files, tensors, params, data_bytes, header_bytes;
} totals;

typedef struct opts {
  int json;
  int tensors; /* index mode: full tables per shard */
} opts;

static uint64_t sat_add(uint64_t a, uint64_t b) {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static void maybe_flush(st__cli_buf *out) {
  if (out->len >= FLUSH_AT) st__cli_flush(out, stdout);
}

static void pad(st__cli_buf *out, size_t have, size_t want) {
  while (have++ < want) st__cli_buf_put(out, " ", 1);
}

static void shape_text(st__cli_buf *b, const st_tensor_info *ti) {
  st__cli_buf_put(b, "[", 1);
  for (uint32_t d = 0; d < ti->rank; d++)
    st__cli_buf_printf(b, d ? ", %llu" : "%llu",
                       (unsigned long long)ti->shape[d]);
  st__cli_buf_put(b, "]", 1);
}

static void file_totals(const st_file *f, totals *t) {
  size_t n = st_tensor_count(f);
  t->files = 1;
  t->tensors = n;
  t->params = 0;
  for (size_t i = 0; i < n; i++) {
    st_tensor_info ti;
    if (st_tensor_get(f, i, &ti) == ST_OK) t->params = sat_add(t->params, ti.numel);
  }
  t->data_bytes = st_data_size(f);
  t->header_bytes = st_header_size(f);
}

static void add_totals(totals *sum, const totals *t) {
  sum->files += t->files;
  sum->tensors = sat_add(sum->tensors, t->tensors);
  sum->params = sat_add(sum->params, t->params);
  sum->data_bytes = sat_add(sum->data_bytes, t->data_bytes);
  sum->header_bytes = sat_add(sum->header_bytes, t->header_bytes);
}

static void totals_json(st__cli_buf *out, const totals *t, int with_files) {
  st__cli_buf_puts(out, "{");
  if (with_files)
    st__cli_buf_printf(out, "\"shards\": %llu, ", (unsigned long long)t->files);
  st__cli_buf_printf(out,
                     "\"tensors\": %llu, \"parameters\": %llu, "
                     "\"data_bytes\": %llu, \"header_bytes\": %llu}",
                     (unsigned long long)t->tensors,
                     (unsigned long long)t->params,
                     (unsigned long long)t->data_bytes,
                     (unsigned long long)t->header_bytes);
}

static void totals_text(st__cli_buf *out, const char *indent, const totals *t,
                        int with_files) {
  char human[32];
  st__cli_human_bytes(t->data_bytes, human, sizeof human);
  st__cli_buf_printf(out, "%stotals: ", indent);
  if (with_files)
    st__cli_buf_printf(out, "%llu shards, ", (unsigned long long)t->files);
  st__cli_buf_printf(out,
                     "%llu tensors, %llu parameters, %llu data bytes (%s), "
                     "%llu header bytes\n",
                     (unsigned long long)t->tensors,
                     (unsigned long long)t->params,
                     (unsigned long long)t->data_bytes, human,
                     (unsigned long long)t->header_bytes);
}

/* A metadata value for the terminal: cut at a UTF-8 boundary if long. */
static void meta_value_text(st__cli_buf *out, const char *v, size_t n) {
  if (n <= META_TEXT_MAX) {
    st__cli_escape_text(out, v, n);
    return;
  }
  size_t cut = META_TEXT_MAX;
  while (cut > 0 && ((unsigned char)v[cut] & 0xC0u) == 0x80u) cut--;
  st__cli_escape_text(out, v, cut);
  st__cli_buf_printf(out, "... (%zu bytes)", n);
}

static void metadata_text(st__cli_buf *out, const char *indent,
                          const st_file *f) {
  size_t n = st_metadata_count(f);
  if (n == 0) {
    st__cli_buf_printf(out, "%smetadata: none\n", indent);
    return;
  }
  st__cli_buf_printf(out, "%smetadata (%zu):\n", indent, n);
  for (size_t k = 0; k < n; k++) {
    const char *key = NULL, *val = NULL;
    size_t klen = 0, vlen = 0;
    if (st_metadata_get(f, k, &key, &klen, &val, &vlen) != ST_OK) continue;
    st__cli_buf_printf(out, "%s  ", indent);
    st__cli_escape_text(out, key, klen);
    st__cli_buf_puts(out, ": ");
    meta_value_text(out, val, vlen);
    st__cli_buf_put(out, "\n", 1);
    maybe_flush(out);
  }
}

static void table_text(st__cli_buf *out, const char *indent, const st_file *f) {
  size_t n = st_tensor_count(f);
  size_t wname = 4, wdtype = 5, wshape = 5;
  st__cli_buf tmp = {0};
  for (size_t i = 0; i < n; i++) {
    st_tensor_info ti;
    if (st_tensor_get(f, i, &ti) != ST_OK) continue;
    tmp.len = 0;
    size_t w = st__cli_escape_text(&tmp, ti.name, ti.name_len);
    if (w > wname) wname = w > NAME_COL_MAX ? NAME_COL_MAX : w;
    size_t dl = strlen(st_dtype_name(ti.dtype));
    if (dl > wdtype) wdtype = dl;
    tmp.len = 0;
    shape_text(&tmp, &ti);
    if (tmp.len > wshape) wshape = tmp.len;
  }
  st__cli_buf_printf(out, "%stensors (%zu):\n", indent, n);
  if (n > 0) {
    st__cli_buf_printf(out, "%s  %-*s  %-*s  %-*s  %s\n", indent, (int)wname,
                       "name", (int)wdtype, "dtype", (int)wshape, "shape",
                       "bytes");
  }
  for (size_t i = 0; i < n; i++) {
    st_tensor_info ti;
    if (st_tensor_get(f, i, &ti) != ST_OK) continue;
    st__cli_buf_printf(out, "%s  ", indent);
    size_t w = st__cli_escape_text(out, ti.name, ti.name_len);
    pad(out, w, wname);
    const char *dn = st_dtype_name(ti.dtype);
    st__cli_buf_printf(out, "  %s", dn);
    pad(out, strlen(dn), wdtype);
    st__cli_buf_puts(out, "  ");
    size_t before = out->len;
    shape_text(out, &ti);
    pad(out, out->len - before, wshape);
    st__cli_buf_printf(out, "  %llu\n",
                       (unsigned long long)(ti.data_end - ti.data_begin));
    maybe_flush(out);
  }
  st__cli_buf_free(&tmp);
}

static void file_json(st__cli_buf *out, const char *path, const st_file *f,
                      int with_tensors) {
  totals t;
  file_totals(f, &t);
  st__cli_buf_puts(out, "{\"file\": ");
  st__cli_escape_json(out, path, strlen(path));
  st__cli_buf_printf(out,
                     ", \"header_bytes\": %llu, \"data_bytes\": %llu, "
                     "\"file_bytes\": %llu, \"metadata\": {",
                     (unsigned long long)st_header_size(f),
                     (unsigned long long)st_data_size(f),
                     (unsigned long long)(st_data_offset(f) + st_data_size(f)));
  size_t nm = st_metadata_count(f);
  for (size_t k = 0; k < nm; k++) {
    const char *key = NULL, *val = NULL;
    size_t klen = 0, vlen = 0;
    if (st_metadata_get(f, k, &key, &klen, &val, &vlen) != ST_OK) continue;
    if (k) st__cli_buf_puts(out, ", ");
    st__cli_escape_json(out, key, klen);
    st__cli_buf_puts(out, ": ");
    st__cli_escape_json(out, val, vlen);
    maybe_flush(out);
  }
  st__cli_buf_puts(out, "}");
  if (with_tensors) {
    st__cli_buf_puts(out, ", \"tensors\": [");
    size_t n = st_tensor_count(f);
    for (size_t i = 0; i < n; i++) {
      st_tensor_info ti;
      if (st_tensor_get(f, i, &ti) != ST_OK) continue;
      st__cli_buf_puts(out, i ? ",\n  {\"name\": " : "\n  {\"name\": ");
      st__cli_escape_json(out, ti.name, ti.name_len);
      st__cli_buf_printf(out, ", \"dtype\": \"%s\", \"shape\": ",
                         st_dtype_name(ti.dtype));
      shape_text(out, &ti);
      st__cli_buf_printf(out,
                         ", \"numel\": %llu, \"data_offsets\": [%llu, %llu], "
                         "\"bytes\": %llu}",
                         (unsigned long long)ti.numel,
                         (unsigned long long)ti.data_begin,
                         (unsigned long long)ti.data_end,
                         (unsigned long long)(ti.data_end - ti.data_begin));
      maybe_flush(out);
    }
    st__cli_buf_puts(out, n ? "\n]" : "]");
  }
  st__cli_buf_puts(out, ", \"totals\": ");
  totals_json(out, &t, 0);
  st__cli_buf_puts(out, "}");
}

static void file_text(st__cli_buf *out, const char *path, const st_file *f,
                      int with_tensors, const char *indent) {
  totals t;
  file_totals(f, &t);
  st__cli_buf_printf(out, "%sfile: ", indent);
  st__cli_escape_text(out, path, strlen(path));
  st__cli_buf_put(out, "\n", 1);
  metadata_text(out, indent, f);
  if (with_tensors) table_text(out, indent, f);
  totals_text(out, indent, &t, 0);
}

/* Opens path; on failure reports on stderr and returns the exit code. */
static int open_or_report(const char *path, st_file **f) {
  st_error e;
  memset(&e, 0, sizeof e);
  st_status s = st_open(path, NULL, f, &e);
  if (s == ST_OK) return ST_CLI_OK;
  st__cli_buf b = {0};
  st__cli_report(&b, "safetensors inspect: ", path, &e);
  st__cli_flush(&b, stderr);
  st__cli_buf_free(&b);
  return st__cli_exit_for(s);
}

static int inspect_file(const char *path, const opts *o) {
  st_file *f = NULL;
  int rc = open_or_report(path, &f);
  if (rc != ST_CLI_OK) return rc;
  st__cli_buf out = {0};
  if (o->json) {
    file_json(&out, path, f, 1);
    st__cli_buf_put(&out, "\n", 1);
  } else {
    file_text(&out, path, f, 1, "");
  }
  st__cli_flush(&out, stdout);
  st__cli_buf_free(&out);
  st_close(f);
  return ST_CLI_OK;
}

static int inspect_index(const char *path, const opts *o) {
  st__cli_index idx;
  char msg[256];
  uint64_t off = UINT64_MAX;
  int rc = st__cli_index_load(path, &idx, msg, sizeof msg, &off);
  if (rc != ST_CLI_OK) {
    st__cli_buf b = {0};
    st__cli_buf_puts(&b, "safetensors inspect: ");
    st__cli_escape_text(&b, path, strlen(path));
    st__cli_buf_printf(&b, ": invalid index: %s", msg);
    if (off != UINT64_MAX)
      st__cli_buf_printf(&b, " at offset %llu", (unsigned long long)off);
    st__cli_buf_put(&b, "\n", 1);
    st__cli_flush(&b, stderr);
    st__cli_buf_free(&b);
    return rc;
  }

  size_t ns = idx.shard_count;
  st_file **files = st__cli_xmalloc((ns ? ns : 1) * sizeof *files);
  char **paths = st__cli_xmalloc((ns ? ns : 1) * sizeof *paths);
  unsigned char **used = st__cli_xmalloc((ns ? ns : 1) * sizeof *used);
  int result = ST_CLI_OK;
  for (size_t s = 0; s < ns; s++) {
    paths[s] = st__cli_shard_path(path, idx.shard_names[s].p);
    files[s] = NULL;
    used[s] = NULL;
    int r = open_or_report(paths[s], &files[s]);
    if (r > result) result = r;
    if (files[s]) {
      size_t cnt = st_tensor_count(files[s]);
      used[s] = st__cli_xmalloc(cnt);
      memset(used[s], 0, cnt ? cnt : 1);
    }
  }

  /* Every weight_map entry must be a tensor of the shard it names. */
  size_t nmissing = 0, nunlisted = 0;
  size_t *missing = st__cli_xmalloc((idx.count ? idx.count : 1) *
                                    sizeof *missing);
  for (size_t i = 0; i < idx.count; i++) {
    st_file *f = files[idx.shard_of[i]];
    size_t at;
    if (!f) continue; /* the shard's own error is already reported */
    if (st_tensor_find(f, idx.tensors[i].p, idx.tensors[i].len, &at) == ST_OK)
      used[idx.shard_of[i]][at] = 1;
    else
      missing[nmissing++] = i;
  }
  for (size_t s = 0; s < ns; s++) {
    if (!files[s]) continue;
    size_t cnt = st_tensor_count(files[s]);
    for (size_t i = 0; i < cnt; i++) nunlisted += used[s][i] == 0;
  }
  if (nmissing > 0 && result < ST_CLI_INVALID) result = ST_CLI_INVALID;

  totals sum;
  memset(&sum, 0, sizeof sum);
  for (size_t s = 0; s < ns; s++) {
    if (!files[s]) continue;
    totals t;
    file_totals(files[s], &t);
    add_totals(&sum, &t);
  }

  st__cli_buf out = {0};
  if (o->json) {
    st__cli_buf_puts(&out, "{\"index\": ");
    st__cli_escape_json(&out, path, strlen(path));
    st__cli_buf_puts(&out, ", \"metadata\": {");
    for (size_t k = 0; k < idx.meta_count; k++) {
      if (k) st__cli_buf_puts(&out, ", ");
      st__cli_escape_json(&out, idx.meta_keys[k].p, idx.meta_keys[k].len);
      st__cli_buf_puts(&out, ": ");
      st__cli_buf_put(&out, idx.meta_raw[k].p, idx.meta_raw[k].len);
    }
    st__cli_buf_printf(&out, "}, \"weight_map_entries\": %zu, \"shards\": [",
                       idx.count);
    for (size_t s = 0; s < ns; s++) {
      st__cli_buf_puts(&out, s ? ",\n" : "\n");
      if (files[s]) {
        file_json(&out, paths[s], files[s], o->tensors);
      } else {
        st__cli_buf_puts(&out, "{\"file\": ");
        st__cli_escape_json(&out, paths[s], strlen(paths[s]));
        st__cli_buf_puts(&out, ", \"error\": true}");
      }
      maybe_flush(&out);
    }
    st__cli_buf_puts(&out, ns ? "\n], \"totals\": " : "], \"totals\": ");
    totals_json(&out, &sum, 1);
    st__cli_buf_puts(&out, ", \"missing\": [");
    for (size_t m = 0; m < nmissing; m++) {
      size_t i = missing[m];
      st__cli_buf_puts(&out, m ? ", {\"tensor\": " : "{\"tensor\": ");
      st__cli_escape_json(&out, idx.tensors[i].p, idx.tensors[i].len);
      st__cli_buf_puts(&out, ", \"shard\": ");
      st__cli_escape_json(&out, idx.shards[i].p, idx.shards[i].len);
      st__cli_buf_puts(&out, "}");
      maybe_flush(&out);
    }
    st__cli_buf_printf(&out, "], \"unlisted_tensors\": %zu, \"valid\": %s}\n",
                       nunlisted, result == ST_CLI_OK ? "true" : "false");
  } else {
    st__cli_buf_puts(&out, "index: ");
    st__cli_escape_text(&out, path, strlen(path));
    st__cli_buf_put(&out, "\n", 1);
    if (idx.meta_count == 0) st__cli_buf_puts(&out, "metadata: none\n");
    else st__cli_buf_printf(&out, "metadata (%zu):\n", idx.meta_count);
    for (size_t k = 0; k < idx.meta_count; k++) {
      st__cli_buf_puts(&out, "  ");
      st__cli_escape_text(&out, idx.meta_keys[k].p, idx.meta_keys[k].len);
      st__cli_buf_puts(&out, ": ");
      meta_value_text(&out, idx.meta_raw[k].p, idx.meta_raw[k].len);
      st__cli_buf_put(&out, "\n", 1);
    }
    st__cli_buf_printf(&out, "weight_map: %zu tensors in %zu shards\n",
                       idx.count, ns);
    for (size_t s = 0; s < ns; s++) {
      st__cli_buf_put(&out, "\n", 1);
      if (files[s]) {
        file_text(&out, paths[s], files[s], o->tensors, "");
      } else {
        st__cli_buf_puts(&out, "file: ");
        st__cli_escape_text(&out, paths[s], strlen(paths[s]));
        st__cli_buf_puts(&out, "\n  error: could not be opened (see above)\n");
      }
      maybe_flush(&out);
    }
    st__cli_buf_put(&out, "\n", 1);
    totals_text(&out, "", &sum, 1);
    if (idx.has_total_size && idx.total_size != sum.data_bytes)
      st__cli_buf_printf(&out,
                         "note: index total_size %llu differs from the "
                         "shards' %llu data bytes\n",
                         (unsigned long long)idx.total_size,
                         (unsigned long long)sum.data_bytes);
    if (nunlisted > 0)
      st__cli_buf_printf(&out,
                         "note: %zu tensors in the shards are not in "
                         "weight_map\n",
                         nunlisted);
    for (size_t m = 0; m < nmissing; m++) {
      size_t i = missing[m];
      st__cli_buf_puts(&out, "error: weight_map entry '");
      st__cli_escape_text(&out, idx.tensors[i].p, idx.tensors[i].len);
      st__cli_buf_puts(&out, "' is not in shard ");
      st__cli_escape_text(&out, idx.shards[i].p, idx.shards[i].len);
      st__cli_buf_put(&out, "\n", 1);
      maybe_flush(&out);
    }
    if (result == ST_CLI_OK)
      st__cli_buf_puts(&out, "check: every weight_map entry is in its shard\n");
  }
  st__cli_flush(&out, stdout);
  st__cli_buf_free(&out);
  if (nmissing > 0)
    fprintf(stderr, "safetensors inspect: %zu weight_map entries not found "
                    "in their shards\n", nmissing);

  free(missing);
  for (size_t s = 0; s < ns; s++) {
    st_close(files[s]);
    free(paths[s]);
    free(used[s]);
  }
  free(files);
  free(paths);
  free(used);
  st__cli_index_free(&idx);
  return result;
}

static const char inspect_usage[] =
    "usage: safetensors inspect [--json] [--tensors] FILE|INDEX.json\n"
    "\n"
    "Shows a file's tensors (name, dtype, shape, bytes) in file order, its\n"
    "metadata and totals: tensors, parameters (sum of element counts), data\n"
    "bytes and header bytes.\n"
    "\n"
    "Given a sharded checkpoint's index (a name ending in .json, HF layout\n"
    "{\"metadata\": {...}, \"weight_map\": {tensor: shard}}), opens every shard\n"
    "named in weight_map, relative to the index's folder, shows each shard's\n"
    "summary and the totals across shards, and checks that every weight_map\n"
    "entry is a tensor of its shard.\n"
    "\n"
    "  --json      machine-readable JSON on stdout\n"
    "  --tensors   with an index: also list every shard's tensors\n"
    "  -h, --help  this text\n"
    "\n"
    "Exit status: 0 valid, 1 invalid file or index mismatch, 2 usage or I/O\n"
    "error.\n";

int st__cli_inspect(int argc, char **argv) {
  opts o = {0, 0};
  const char *path = NULL;
  int only_args = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!only_args && strcmp(a, "--") == 0) {
      only_args = 1;
    } else if (!only_args && (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)) {
      fputs(inspect_usage, stdout);
      return ST_CLI_OK;
    } else if (!only_args && strcmp(a, "--json") == 0) {
      o.json = 1;
    } else if (!only_args && strcmp(a, "--tensors") == 0) {
      o.tensors = 1;
    } else if (!only_args && a[0] == '-' && a[1] != '\0') {
      fprintf(stderr, "safetensors inspect: unknown option '%s'\n\n%s", a,
              inspect_usage);
      return ST_CLI_ERROR;
    } else if (path) {
      fprintf(stderr, "safetensors inspect: one file at a time\n\n%s",
              inspect_usage);
      return ST_CLI_ERROR;
    } else {
      path = a;
    }
  }
  if (!path) {
    fprintf(stderr, "safetensors inspect: no file given\n\n%s", inspect_usage);
    return ST_CLI_ERROR;
  }
  return st__cli_is_index(path) ? inspect_index(path, &o)
                                  : inspect_file(path, &o);
}
