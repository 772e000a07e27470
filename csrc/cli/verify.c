/* `safetensors verify`: full validation of each file, then every tensor's
 * bytes read back through a pread handle to prove they are readable. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Bigger tensors are read in pieces of this size so that memory stays flat. */
#define READ_CHUNK ((size_t)16 << 20)

static const char verify_usage[] =
    "usage: safetensors verify [-q] FILE...\n"
    "\n"
    "Validates each file completely: the header and every rule of the format\n"
    "(opened with the default mmap backend), then reads every tensor's bytes\n"
    "through a pread-backed handle. Prints one line per file:\n"
    "  OK <file>: N tensors, B bytes\n"
    "  INVALID <file>: ST_ERR_NAME: message at offset X (tensor 'name')\n"
    "and for files that cannot be read, on stderr:\n"
    "  ERROR <file>: ST_ERR_IO: message (reason)\n"
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
    int rc = verify_one(a, quiet, &buf, &buf_cap);
    if (rc > worst) worst = rc;
    fflush(stdout);
  }
  free(buf);
  return worst;
}
