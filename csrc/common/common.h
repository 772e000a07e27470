/* Internal to the safetensors library: not installed, not part of the ABI.
 * csrc/common: the helpers every layer shares, once: allocation through the
 * caller's allocator, error records, UTF-8, byte-wise comparison, checked
 * arithmetic (checked.h) and the strict JSON reader (json.h). It includes
 * nothing from core or io and makes no system calls; C and C++ alike. */
#ifndef ST_COMMON_COMMON_H
#define ST_COMMON_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Allocation: a NULL allocator (or NULL function) means libc. A size of 0
 * allocates 1 byte, so NULL always means failure. */
void *st__malloc(const st_allocator *a, size_t size);
void *st__calloc(const st_allocator *a, size_t n, size_t size); /* checked */
void *st__realloc(const st_allocator *a, void *ptr, size_t size);
void st__free(const st_allocator *a, void *ptr);

/* The constant description and the symbolic name of a status (static
 * storage, never NULL): what st_status_str / st_status_name return. */
const char *st__status_text(st_status status);
const char *st__status_symbol(st_status status);

/* Fills err (if non-NULL) and returns code. message NULL: the status's
 * text. name may be NULL. */
st_status st__fail(st_error *err, st_status code, const char *message,
                   uint64_t offset, const char *name, size_t name_len,
                   int sys_errno);

/* Marks err as success (code ST_OK) when non-NULL. */
void st__ok(st_error *err);

/* Validates UTF-8 (no overlongs, no surrogates, <= U+10FFFF). Returns the
 * index of the first bad byte, or len when the whole text is valid. */
size_t st__utf8_check(const unsigned char *s, size_t len);

/* Length of the well-formed UTF-8 sequence at s[0..n) (1..4, n >= 1), its
 * code point in *cp; 0 when the bytes are not well-formed (overlong,
 * surrogate, past U+10FFFF, cut by n). */
size_t st__utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);

/* Encodes code point cp (<= U+10FFFF) as UTF-8 into out; returns 1..4. */
size_t st__utf8_put(unsigned char out[4], uint32_t cp);

/* Whether the n bytes at p are all zero (reserved fields of options). */
bool st__all_zero(const void *p, size_t n);

/* Byte-wise order of a[0..al) and b[0..bl): memcmp, then the shorter first.
 * Negative, zero or positive. */
int st__bytes_cmp(const void *a, size_t al, const void *b, size_t bl);

#ifdef __cplusplus
}
#endif

#endif /* ST_COMMON_COMMON_H */
