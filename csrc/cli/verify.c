/* `safetensors verify`: full validation of each file, then every tensor's
 * bytes read back through a pread handle to prove they are readable. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Bigger tensors are read in pieces of this size so that memory stays flat. */
#define READ_CHUNK ((size_t)16 << 20)

static const char verify_usage[] =
    "usage: safetensors verify [-q] FILE|INDEX.json...\n"
    "\n"
    "Validates each file completely: the header and every rule of the format\n"
    "(opened with the default mmap backend), then reads every tensor's bytes\n"
    "through a pread-backed handle. Prints one line per file:\n"
    "  OK <file>: N tensors, B bytes\n"
    "  INVALID <file>: ST_ERR_NAME: message at offset X (tensor 'name')\n"
    "and for files that cannot be read, on stderr:\n"
    "  ERROR <file>: ST_ERR_IO: message (reason)\n"
    "\n"
    "A sharded checkpoint's index (a name ending in .json, HF layout) is\n"
    "checked itself, then every shard it names is verified as above, and\n"
    "every weight_map entry must be a tensor of its shard:\n"
    "  OK <index>: S shards, N weight_map entries\n"
    "  INVALID <index>: weight_map entry 'name' is not in shard <file>\n"
    "\n"
    "  -q, --quiet  print only the files that fail\n"
    "  -h, --help   this text\n"
    "\n"
    "Exit status: 0 all valid, 1 some file invalid, 2 usage or I/O error\n"
    "(I/O errors win over invalid files).\n";

/* Reads every tensor of a pread handle; fills e on failure. */
static st_status read_all(const st_file *f, unsigned char **buf,
                          size_t *buf_cap, st_error *e) {
  size_t n = st_tensor_count(f);
  for (size_t i = 0; i < n; i++) {
    st_tensor_info ti;
    st_status s = st_tensor_get(f, i, &ti);
    if (s != ST_OK) {
      memset(e, 0, sizeof *e);
      e->code = s;
      e->message = st_status_str(s);
      e->offset = ST_NO_OFFSET;
      return s;
    }
    uint64_t size = ti.data_end - ti.data_begin;
    size_t want = size < READ_CHUNK ? (size_t)size : READ_CHUNK;
    if (want == 0) want = 1; /* never hand the reader a NULL buffer */
    if (want > *buf_cap) {
      *buf = st__cli_xrealloc(*buf, want);
      *buf_cap = want;
    }
    if (size <= READ_CHUNK) {
      s = st_tensor_read(f, i, *buf, *buf_cap, e);
      if (s != ST_OK) return s;
      continue;
    }
    for (uint64_t done = 0; done < size;) {
      uint64_t len = size - done < READ_CHUNK ? size - done : READ_CHUNK;
      s = st_read_range(f, ti.data_begin + done, len, *buf, e);
      if (s != ST_OK) return s;
      done += len;
    }
  }
  return ST_OK;
}

static int verify_one(const char *path, int quiet, unsigned char **buf,
                      size_t *buf_cap) {
  st_error e;
  st_file *f = NULL, *g = NULL;
  st_open_options po;
  memset(&e, 0, sizeof e);
  st_status s = st_open(path, NULL, &f, &e);
  if (s == ST_OK) {
    st_open_options_init(&po);
    po.backend = ST_BACKEND_PREAD;
    s = st_open(path, &po, &g, &e);
  }
  if (s == ST_OK) s = read_all(g, buf, buf_cap, &e);

  st__cli_buf b = {0};
  int rc = st__cli_exit_for(s);
  FILE *stream = rc == ST_CLI_ERROR ? stderr : stdout;
  if (s == ST_OK) {
    if (!quiet) {
      st__cli_buf_puts(&b, "OK ");
      st__cli_escape_text(&b, path, strlen(path));
      st__cli_buf_printf(&b, ": %zu tensors, %llu bytes\n",
                         st_tensor_count(f),
                         (unsigned long long)(st_data_offset(f) +
                                              st_data_size(f)));
    }
  } else {
    st__cli_report(&b, rc == ST_CLI_ERROR ? "ERROR " : "INVALID ", path, &e);
  }
  st__cli_flush(&b, stream);
  st__cli_buf_free(&b);
  st_close(g);
  st_close(f);
  return rc;
}

static void index_line(const char *prefix, const char *path, const char *text,
                       FILE *stream) {
  st__cli_buf b = {0};
  st__cli_buf_puts(&b, prefix);
  st__cli_escape_text(&b, path, strlen(path));
  st__cli_buf_puts(&b, ": ");
  st__cli_buf_puts(&b, text);
  st__cli_buf_put(&b, "\n", 1);
  st__cli_flush(&b, stream);
  st__cli_buf_free(&b);
}

/* The index, then each shard once, then every weight_map entry in its
 * shard. */
static int verify_index(const char *path, int quiet, unsigned char **buf,
                        size_t *buf_cap) {
  st__cli_index idx;
  char msg[256];
  uint64_t off = UINT64_MAX;
  int rc = st__cli_index_load(path, &idx, msg, sizeof msg, &off);
  if (rc != ST_CLI_OK) {
    char text[320];
    if (off != UINT64_MAX)
      snprintf(text, sizeof text, "invalid index: %s at offset %llu", msg,
               (unsigned long long)off);
    else
      snprintf(text, sizeof text, "invalid index: %s", msg);
    index_line(rc == ST_CLI_ERROR ? "ERROR " : "INVALID ", path, text,
               rc == ST_CLI_ERROR ? stderr : stdout);
    return rc;
  }
  int worst = ST_CLI_OK;
  st_file **files = st__cli_xmalloc((idx.shard_count ? idx.shard_count : 1) *
                                    sizeof *files);
  for (size_t s = 0; s < idx.shard_count; s++) {
    char *shard = st__cli_shard_path(path, idx.shard_names[s].p);
    int r = verify_one(shard, quiet, buf, buf_cap);
    if (r > worst) worst = r;
    files[s] = NULL;
    if (r == ST_CLI_OK && st_open(shard, NULL, &files[s], NULL) != ST_OK)
      files[s] = NULL;
    free(shard);
  }
  size_t missing = 0;
  for (size_t i = 0; i < idx.count; i++) {
    st_file *f = files[idx.shard_of[i]];
    size_t at;
    if (!f) continue; /* the shard's own line says why */
    if (st_tensor_find(f, idx.tensors[i].p, idx.tensors[i].len, &at) == ST_OK)
      continue;
    missing++;
    st__cli_buf b = {0};
    st__cli_buf_puts(&b, "INVALID ");
    st__cli_escape_text(&b, path, strlen(path));
    st__cli_buf_puts(&b, ": weight_map entry '");
    st__cli_escape_text(&b, idx.tensors[i].p, idx.tensors[i].len);
    st__cli_buf_puts(&b, "' is not in shard ");
    st__cli_escape_text(&b, idx.shards[i].p, idx.shards[i].len);
    st__cli_buf_put(&b, "\n", 1);
    st__cli_flush(&b, stdout);
    st__cli_buf_free(&b);
  }
  if (missing > 0 && worst < ST_CLI_INVALID) worst = ST_CLI_INVALID;
  if (worst == ST_CLI_OK && !quiet) {
    char text[96];
    snprintf(text, sizeof text, "%zu shards, %zu weight_map entries",
             idx.shard_count, idx.count);
    index_line("OK ", path, text, stdout);
  }
  for (size_t s = 0; s < idx.shard_count; s++) st_close(files[s]);
  free(files);
  st__cli_index_free(&idx);
  return worst;
}

int st__cli_verify(int argc, char **argv) {
  int quiet = 0, only_args = 0, nfiles = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (only_args || a[0] != '-' || a[1] == '\0') {
      nfiles++;
    } else if (strcmp(a, "--") == 0) {
      only_args = 1;
    } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      fputs(verify_usage, stdout);
      return ST_CLI_OK;
    } else if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0) {
      quiet = 1;
    } else {
      fprintf(stderr, "safetensors verify: unknown option '%s'\n\n%s", a,
              verify_usage);
      return ST_CLI_ERROR;
    }
  }
  if (nfiles == 0) {
    fprintf(stderr, "safetensors verify: no file given\n\n%s", verify_usage);
    return ST_CLI_ERROR;
  }
  unsigned char *buf = NULL;
  size_t buf_cap = 0;
  int worst = ST_CLI_OK;
  only_args = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!only_args && strcmp(a, "--") == 0) {
      only_args = 1;
      continue;
    }
    if (!only_args && a[0] == '-' && a[1] != '\0') continue;
    int rc = st__cli_is_index(a) ? verify_index(a, quiet, &buf, &buf_cap)
                                 : verify_one(a, quiet, &buf, &buf_cap);
    if (rc > worst) worst = rc;
    fflush(stdout);
  }
  free(buf);
  return worst;
}
