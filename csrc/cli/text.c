/* Output helpers of the safetensors command: growable buffers and escaping
 * of untrusted names for terminals and JSON. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/common.h"
#include "common/json.h"

void *st__cli_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fputs("safetensors: out of memory\n", stderr);
    exit(ST_CLI_ERROR);
  }
  return p;
}

void *st__cli_xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    fputs("safetensors: out of memory\n", stderr);
    exit(ST_CLI_ERROR);
  }
  return q;
}

static void buf_reserve(st__cli_buf *b, size_t extra) {
  size_t need;
  if (extra > SIZE_MAX - b->len - 1) {
    fputs("safetensors: out of memory\n", stderr);
    exit(ST_CLI_ERROR);
  }
  need = b->len + extra + 1;
  if (need <= b->cap) return;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  b->p = st__cli_xrealloc(b->p, cap);
  b->cap = cap;
}

void st__cli_buf_put(st__cli_buf *b, const char *s, size_t n) {
  buf_reserve(b, n);
  if (n) memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

void st__cli_buf_puts(st__cli_buf *b, const char *s) {
  st__cli_buf_put(b, s, strlen(s));
}

void st__cli_buf_printf(st__cli_buf *b, const char *fmt, ...) {
  va_list ap;
  char small[256];
  va_start(ap, fmt);
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof small) {
    st__cli_buf_put(b, small, (size_t)n);
    return;
  }
  buf_reserve(b, (size_t)n);
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

void st__cli_buf_free(st__cli_buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

void st__cli_flush(st__cli_buf *b, FILE *f) {
  if (b->len) fwrite(b->p, 1, b->len, f);
  b->len = 0;
  if (b->p) b->p[0] = '\0';
}


/* Code points a terminal may act on or that reorder the text around them. */
static int cp_is_hidden(uint32_t cp) {
  return (cp >= 0x80 && cp <= 0x9F) || cp == 0x200E || cp == 0x200F ||
         (cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069) ||
         cp == 0xFEFF;
}

size_t st__cli_escape_text(st__cli_buf *b, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t width = 0, i = 0;
  char tmp[16];
  while (i < n) {
    uint32_t cp = 0;
    size_t len = st__utf8_decode(u + i, n - i, &cp);
    if (len == 0) {
      snprintf(tmp, sizeof tmp, "\\x%02x", u[i]);
      st__cli_buf_puts(b, tmp);
      width += 4;
      i++;
      continue;
    }
    if (cp == '\\') {
      st__cli_buf_put(b, "\\\\", 2);
      width += 2;
    } else if (cp == '\n' || cp == '\t' || cp == '\r') {
      st__cli_buf_put(b, cp == '\n' ? "\\n" : cp == '\t' ? "\\t" : "\\r", 2);
      width += 2;
    } else if (cp < 0x20 || cp == 0x7F) {
      snprintf(tmp, sizeof tmp, "\\x%02x", (unsigned)cp);
      st__cli_buf_puts(b, tmp);
      width += 4;
    } else if (cp_is_hidden(cp)) {
      int k = snprintf(tmp, sizeof tmp, "\\u{%04x}", (unsigned)cp);
      st__cli_buf_puts(b, tmp);
      width += (size_t)k;
    } else {
      st__cli_buf_put(b, s + i, len);
      width += 1;
    }
    i += len;
  }
  return width;
}

static void buf_put(void *ctx, const char *s, size_t len) { st__cli_buf_put(ctx, s, len); }

void st__cli_escape_json(st__cli_buf *b, const char *s, size_t n) {
  st__json_escape(s, n, ST__JSON_ESCAPE_REPLACE, buf_put, b);
}

void st__cli_human_bytes(uint64_t n, char *out, size_t cap) {
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB",
                                      "PiB", "EiB"};
  double v = (double)n;
  size_t u = 0;
  if (n < 1024) {
    snprintf(out, cap, "%llu B", (unsigned long long)n);
    return;
  }
  while (v >= 1024.0 && u + 1 < sizeof units / sizeof units[0]) {
    v /= 1024.0;
    u++;
  }
  snprintf(out, cap, "%.1f %s", v, units[u]);
}

void st__cli_report(st__cli_buf *b, const char *prefix, const char *path, const st_error *e) {
  st__cli_buf_puts(b, prefix);
  st__cli_escape_text(b, path, strlen(path));
  st__cli_buf_puts(b, ": ");
  st__cli_describe_error(b, e);
  st__cli_buf_put(b, "\n", 1);
}

void st__cli_describe_error(st__cli_buf *b, const st_error *e) {
  st__cli_buf_printf(b, "%s: %s", st_status_name(e->code),
                     e->message ? e->message : st_status_str(e->code));
  if (e->code == ST_ERR_IO && e->sys_errno != 0)
    st__cli_buf_printf(b, " (%s)", strerror(e->sys_errno));
  if (e->offset != ST_NO_OFFSET)
    st__cli_buf_printf(b, " at offset %llu", (unsigned long long)e->offset);
  if (e->name[0] != '\0' || e->name_len > 0) {
    /* name_len counts a NUL inside the name too; fall back to the string
     * only for a record that left name_len at 0. */
    size_t shown = e->name_len ? e->name_len : strnlen(e->name, sizeof e->name);
    if (shown > sizeof e->name - 1) {
      shown = sizeof e->name - 1;
      while (shown > 0 && ((unsigned char)e->name[shown] & 0xC0u) == 0x80u)
        shown--;
    }
    st__cli_buf_puts(b, " (tensor '");
    st__cli_escape_text(b, e->name, shown);
    if (e->name_len > shown) st__cli_buf_puts(b, "...");
    st__cli_buf_puts(b, "')");
  }
}

int st__cli_exit_for(st_status status) {
  switch (status) {
    case ST_OK: return ST_CLI_OK;
    case ST_ERR_IO:
    case ST_ERR_NOMEM:
    case ST_ERR_INVALID_ARGUMENT: return ST_CLI_ERROR;
    default: return ST_CLI_INVALID;
  }
}
