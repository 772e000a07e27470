/* Status strings, error records, allocation, UTF-8 and byte comparison,
 * shared by every layer. */
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "common.h"

static const struct {
  const char *name;
  const char *text;
} status_table[] = {
    {"ST_OK", "success"},
    {"ST_ERR_INVALID_ARGUMENT", "invalid argument"},
    {"ST_ERR_NOMEM", "out of memory"},
    {"ST_ERR_IO", "I/O error"},
    {"ST_ERR_HEADER_TOO_SMALL", "file too small to hold a header length"},
    {"ST_ERR_HEADER_TOO_LARGE", "header length over the limit"},
    {"ST_ERR_INVALID_HEADER_LENGTH", "header length points past the end of the file"},
    {"ST_ERR_INVALID_HEADER", "header is not valid UTF-8"},
    {"ST_ERR_HEADER_DESERIALIZATION", "header is not a JSON object of the required shape"},
    {"ST_ERR_VALIDATION_OVERFLOW", "element or byte count overflows"},
    {"ST_ERR_MISALIGNED_SLICE", "sub-byte tensor is not a whole number of bytes"},
    {"ST_ERR_INVALID_TENSOR_INFO", "byte range length does not match shape and dtype"},
    {"ST_ERR_INVALID_OFFSET", "tensor byte ranges do not tile the data section"},
    {"ST_ERR_INCOMPLETE_BUFFER", "data section size does not match the tensors"},
    {"ST_ERR_DUPLICATE_KEY", "duplicate key"},
    {"ST_ERR_NUL_IN_STRING", "NUL character in a name or metadata string"},
    {"ST_ERR_LIMIT", "a configured limit was exceeded"},
    {"ST_ERR_NOT_FOUND", "not found"},
    {"ST_ERR_INVALID_SLICE", "invalid slice"},
    {"ST_ERR_BUFFER_TOO_SMALL", "destination buffer too small"},
    {"ST_ERR_UNSUPPORTED", "operation not supported here"},
    {"ST_ERR_RESERVED_NAME", "the tensor name __metadata__ is reserved"},
    {"ST_ERR_CALLBACK", "a producer callback failed"},
    {"ST_ERR_FILE_CHANGED", "the file changed or shrank while being read"},
};

#define STATUS_COUNT (sizeof status_table / sizeof status_table[0])

const char *st__status_text(st_status status) {
  if ((unsigned)status < STATUS_COUNT) return status_table[status].text;
  return "unknown status";
}

const char *st__status_symbol(st_status status) {
  if ((unsigned)status < STATUS_COUNT) return status_table[status].name;
  return "ST_ERR_UNKNOWN";
}

st_status st__fail(st_error *err, st_status code, const char *message,
                   uint64_t offset, const char *name, size_t name_len,
                   int sys_errno) {
  if (err == NULL) return code;
  memset(err, 0, sizeof *err);
  err->code = code;
  err->sys_errno = sys_errno;
  err->message = message != NULL ? message : st__status_text(code);
  err->offset = offset;
  if (name != NULL) {
    size_t n = name_len < ST_ERROR_NAME_CAP - 1 ? name_len : ST_ERROR_NAME_CAP - 1;
    memcpy(err->name, name, n);
    err->name[n] = '\0';
    err->name_len = name_len;
  }
  return code;
}

void st__ok(st_error *err) {
  if (err == NULL) return;
  memset(err, 0, sizeof *err);
  err->code = ST_OK;
  err->message = status_table[0].text;
  err->offset = ST_NO_OFFSET;
}

void *st__malloc(const st_allocator *a, size_t size) {
  if (size == 0) size = 1;
  if (a != NULL && a->malloc_fn != NULL) return a->malloc_fn(a->ctx, size);
  return malloc(size);
}

void *st__calloc(const st_allocator *a, size_t n, size_t size) {
  size_t total;
  if (st__mul_overflow_size(n, size, &total)) return NULL;
  void *p = st__malloc(a, total);
  if (p != NULL) memset(p, 0, total);
  return p;
}

void *st__realloc(const st_allocator *a, void *ptr, size_t size) {
  if (size == 0) size = 1;
  if (a != NULL && a->realloc_fn != NULL) return a->realloc_fn(a->ctx, ptr, size);
  return realloc(ptr, size);
}

void st__free(const st_allocator *a, void *ptr) {
  if (ptr == NULL) return;
  if (a != NULL && a->free_fn != NULL) {
    a->free_fn(a->ctx, ptr);
    return;
  }
  free(ptr);
}

size_t st__utf8_check(const unsigned char *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    /* Headers are almost all ASCII: skip it eight bytes at a time. */
    while (len - i >= 8) {
      uint64_t w;
      memcpy(&w, s + i, sizeof w);
      if (w & UINT64_C(0x8080808080808080)) break;
      i += 8;
    }
    if (i >= len) break;
    unsigned c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t n;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c == 0xE0) {
      n = 2; lo = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
      n = 2;
    } else if (c == 0xED) {
      n = 2; hi = 0x9F; /* no UTF-16 surrogates */
    } else if (c == 0xF0) {
      n = 3; lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
      n = 3;
    } else if (c == 0xF4) {
      n = 3; hi = 0x8F;
    } else {
      return i;
    }
    if (n >= len - i) return i; /* a sequence cut by the end of the text */
    unsigned b = s[i + 1];
    if (b < lo || b > hi) return i;
    for (size_t k = 2; k <= n; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
    }
    i += n + 1;
  }
  return len;
}

size_t st__utf8_put(unsigned char out[4], uint32_t cp) {
  if (cp < 0x80) {
    out[0] = (unsigned char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (unsigned char)(0xC0 | (cp >> 6));
    out[1] = (unsigned char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (unsigned char)(0xE0 | (cp >> 12));
    out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (unsigned char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (unsigned char)(0xF0 | (cp >> 18));
  out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
  out[3] = (unsigned char)(0x80 | (cp & 0x3F));
  return 4;
}

bool st__all_zero(const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i] != 0) return false;
  return true;
}

int st__bytes_cmp(const void *a, size_t al, const void *b, size_t bl) {
  size_t m = al < bl ? al : bl;
  int c = m > 0 ? memcmp(a, b, m) : 0;
  if (c != 0) return c;
  return al < bl ? -1 : al > bl;
}

size_t st__utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
  unsigned c = s[0];
  size_t len;
  uint32_t v, min;
  if (c < 0x80) {
    *cp = c;
    return 1;
  } else if (c >= 0xC2 && c <= 0xDF) {
    len = 2; v = c & 0x1Fu; min = 0x80;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3; v = c & 0x0Fu; min = 0x800;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4; v = c & 0x07u; min = 0x10000;
  } else {
    return 0;
  }
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0u) != 0x80u) return 0;
    v = (v << 6) | (s[i] & 0x3Fu);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return len;
}
