/* Internal to the safetensors command: not installed, not part of the ABI.
 * Helpers shared by the verbs: a growable string, safe escaping of untrusted
 * text for terminals and for JSON, the strict index.json reader. */
#ifndef ST_CLI_H
#define ST_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "safetensors.h"

/* Exit codes of every verb. */
enum { ST_CLI_OK = 0, ST_CLI_INVALID = 1, ST_CLI_ERROR = 2 };

/* A growable byte string, always NUL-terminated once anything was added.
 * Allocation failure ends the process (exit 2): the CLI has no way to carry
 * on without its output buffers. */
typedef struct st__cli_buf {
  char *p;
  size_t len;
  size_t cap;
} st__cli_buf;

void st__cli_buf_put(st__cli_buf *b, const char *s, size_t n);
void st__cli_buf_puts(st__cli_buf *b, const char *s);
void st__cli_buf_printf(st__cli_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void st__cli_buf_free(st__cli_buf *b);
void *st__cli_xmalloc(size_t n);
void *st__cli_xrealloc(void *p, size_t n);

/* Appends s[0..n) for a terminal: control characters, C1 controls,
 * bidirectional overrides and invalid UTF-8 become visible escapes, and a
 * backslash is doubled so the output is unambiguous. Returns the display
 * width added (one column per code point). */
size_t st__cli_escape_text(st__cli_buf *b, const char *s, size_t n);

/* Appends s[0..n) as a JSON string literal, quotes included. Invalid UTF-8
 * bytes (only possible in truncated error names) become U+FFFD. */
void st__cli_escape_json(st__cli_buf *b, const char *s, size_t n);

/* Writes the buffer to f and empties it. */
void st__cli_flush(st__cli_buf *b, FILE *f);

/* "1.5 GiB"-style rendering of a byte count into out (cap >= 32). */
void st__cli_human_bytes(uint64_t n, char *out, size_t cap);

/* Appends "ST_ERR_NAME: message at offset X (tensor 'name')" for a failed
 * call (the offset and name parts only when present; errno text for I/O). */
void st__cli_describe_error(st__cli_buf *b, const st_error *e);

/* One error line: prefix, the escaped path, ": ", the description, "\n". */
void st__cli_report(st__cli_buf *b, const char *prefix, const char *path, const st_error *e);

/* The exit code a failed status maps to: ST_CLI_ERROR for I/O, memory and
 * argument failures, ST_CLI_INVALID for everything the file caused. */
int st__cli_exit_for(st_status status);

/* --- index.json ------------------------------------------------------- */

typedef struct st__cli_str {
  char *p; /* decoded UTF-8, NUL-terminated, owned */
  size_t len;
} st__cli_str;

typedef struct st__cli_index {
  st__cli_str *tensors; /* weight_map keys, in file order */
  st__cli_str *shards;  /* weight_map values, parallel to tensors */
  size_t count;
  st__cli_str *meta_keys; /* "metadata" entries: decoded key */
  st__cli_str *meta_raw;  /* and the value's raw, validated JSON text */
  size_t meta_count;
  st__cli_str *shard_names; /* distinct shards, byte-wise sorted (borrowed
                               from shards) */
  size_t shard_count;
  size_t *shard_of; /* per weight_map entry: index into shard_names */
  int has_total_size;
  uint64_t total_size;
} st__cli_index;

/* Reads and strictly validates an HF index file. On failure returns
 * ST_CLI_INVALID (bad JSON or shape) or ST_CLI_ERROR (I/O), with a message
 * in msg (and the byte offset in *offset, or UINT64_MAX). */
int st__cli_index_load(const char *path, st__cli_index *out, char *msg,
                       size_t msg_cap, uint64_t *offset);
void st__cli_index_free(st__cli_index *idx);

/* True when path names an index (a name ending in .json), for every verb. */
int st__cli_is_index(const char *path);

/* A shard's path: name joined to the index's folder (caller frees). */
char *st__cli_shard_path(const char *index_path, const char *name);

/* Verbs. argv[0] is the verb. */
int st__cli_inspect(int argc, char **argv);
int st__cli_verify(int argc, char **argv);

#endif /* ST_CLI_H */
