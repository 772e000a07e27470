/* Internal to the safetensors library: not installed, not part of the ABI.
 * The one strict JSON reader (RFC 8259) of the project: the safetensors
 * header (core/header.c), the CLI's index.json (cli/index.c) and the C++
 * adapter's structure record all read JSON through it. C and C++ alike.
 *
 * st__json_parse checks the whole text in one linear pass before anything is
 * used: valid UTF-8, the complete grammar (no trailing commas, stray or
 * missing separators, bad literals, leading zeros, lone surrogates, raw
 * control characters, trailing garbage), a nesting limit (an explicit bit
 * stack: no recursion driven by input), then cuts the text into a flat token
 * array in document order. Numbers are never converted through double.
 * Duplicate keys are not refused here (the format's rules differ per
 * object): st__json_find_duplicate finds them. */
#ifndef ST_COMMON_JSON_H
#define ST_COMMON_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum st__json_type {
  ST__JSON_OBJECT = 1,
  ST__JSON_ARRAY = 2,
  ST__JSON_STRING = 3,
  ST__JSON_PRIMITIVE = 4 /* number, true, false or null */
} st__json_type;

/* One token. Offsets are byte indices into the text. */
typedef struct st__json_tok {
  uint32_t type;  /* st__json_type */
  uint32_t start; /* STRING: the byte after the opening quote; else the first */
  uint32_t end;   /* STRING: the closing quote; else one past the last byte */
  uint32_t size;  /* OBJECT: members; ARRAY: elements; an object key: 1;
                     else 0 */
  uint32_t next;  /* index of the token after this one's subtree (an object
                     key's is its value) */
} st__json_tok;

typedef enum st__json_status {
  ST__JSON_OK = 0,
  ST__JSON_SYNTAX = 1,    /* not JSON (or, with the flags, not the shape) */
  ST__JSON_UTF8 = 2,      /* the text is not valid UTF-8 */
  ST__JSON_DEPTH = 3,     /* nesting deeper than max_depth */
  ST__JSON_TOO_LARGE = 4, /* over ST__JSON_MAX_TEXT bytes */
  ST__JSON_NOMEM = 5
} st__json_status;

/* Texts up to this many bytes (token offsets are 32-bit). */
#define ST__JSON_MAX_TEXT ((size_t)INT32_MAX - 16)

/* Flags of st__json_parse. */
#define ST__JSON_ROOT_OBJECT 0x1u    /* the root value must be an object */
#define ST__JSON_FINITE_NUMBERS 0x2u /* refuse a number whose magnitude is
                                        past DBL_MAX (serde_json refuses it
                                        anywhere; Python's json reads inf) */

typedef struct st__json_error {
  st__json_status code;
  const char *message; /* constant; "" on success */
  size_t pos;          /* byte index in the text where it went wrong */
} st__json_error;

/* A parsed text. The text is borrowed: it must outlive the document. */
typedef struct st__json {
  const unsigned char *text;
  size_t len;
  st__json_tok *tok; /* ntok tokens, document order; tok[0] is the root */
  size_t ntok;
  const st_allocator *alloc;
} st__json;

/* Parses text[0..len) strictly. max_depth: the deepest nesting of arrays and
 * objects allowed (the root object is depth 1). alloc NULL: libc. On success
 * *doc holds the tokens (free with st__json_free); on failure *doc is empty
 * and err (may be NULL) says what and where. Leading and trailing JSON
 * whitespace is allowed; nothing else may follow the root value. */
st__json_status st__json_parse(const void *text, size_t len,
                               uint32_t max_depth, uint32_t flags,
                               const st_allocator *alloc, st__json *doc,
                               st__json_error *err);

/* Frees the tokens; safe on an empty or zeroed document. */
void st__json_free(st__json *doc);

/* The raw bytes of token k between its quotes (strings) or of its text. */
static inline const unsigned char *st__json_raw(const st__json *doc, size_t k,
                                                size_t *len) {
  *len = (size_t)(doc->tok[k].end - doc->tok[k].start);
  return doc->text + doc->tok[k].start;
}

/* The byte index where token k begins: a string's opening quote. */
static inline size_t st__json_pos(const st__json *doc, size_t k) {
  return (size_t)doc->tok[k].start - (doc->tok[k].type == ST__JSON_STRING ? 1u : 0u);
}

/* Decodes the escapes of the raw string body raw[0..len) (as the parser
 * accepted it). The decoded bytes are written to out while they fit in cap
 * (an escape's encoding whole or not at all), then a NUL when a byte is left:
 * cap = len + 1 always holds the whole string (decoding never lengthens). Returns the full decoded
 * length; *written (may be NULL) gets the bytes written, *nul_at (may be NULL)
 * the raw index of the first character that decodes to U+0000, or SIZE_MAX. */
size_t st__json_unescape(const unsigned char *raw, size_t len,
                         unsigned char *out, size_t cap, size_t *written,
                         size_t *nul_at);

/* As st__json_unescape, for string token k. */
size_t st__json_string(const st__json *doc, size_t k, unsigned char *out,
                       size_t cap, size_t *written, size_t *nul_at);

/* Whether the decoded raw string body raw[0..len) equals lit[0..lit_len). */
bool st__json_unescaped_is(const unsigned char *raw, size_t len,
                           const char *lit, size_t lit_len);

/* Whether string token k, decoded, equals lit[0..lit_len). */
bool st__json_string_is(const st__json *doc, size_t k, const char *lit,
                        size_t lit_len);

/* Token k as an exact unsigned 64-bit integer: a primitive of digits only,
 * no sign, fraction or exponent, no leading zero, no overflow. */
bool st__json_u64(const st__json *doc, size_t k, uint64_t *out);

/* Whether token k is the literal null. */
bool st__json_is_null(const st__json *doc, size_t k);

/* Finds a key that appears twice in the object at token obj, comparing
 * decoded keys. *dup gets the token of the later of the first duplicate pair
 * found (the one to report), or SIZE_MAX when every key is unique. Returns
 * ST__JSON_OK or ST__JSON_NOMEM. O(n log n). */
st__json_status st__json_find_duplicate(const st__json *doc, size_t obj,
                                        size_t *dup);

/* Writing. Flags of st__json_escape. */
#define ST__JSON_ESCAPE_ASCII 0x1u   /* every code point outside ' '..'~' as
                                        \\uXXXX (lowercase; a surrogate pair
                                        above U+FFFF), as Python's json.dumps
                                        (ensure_ascii=True) writes */
#define ST__JSON_ESCAPE_REPLACE 0x2u /* a byte that is not well-formed UTF-8
                                        becomes \\ufffd (else: copied) */

/* Receives the escaped text, in order. */
typedef void (*st__json_put_fn)(void *ctx, const char *bytes, size_t len);

/* Writes s[0..len) as a JSON string, quotes included, through put. With no
 * flags it is serde_json's escaping, which the reference writer uses: '"' and
 * '\\', the five short control escapes (\\b \\f \\n \\r \\t), \\u00xx
 * (lowercase) for the other controls, every other byte as it is. */
void st__json_escape(const char *s, size_t len, uint32_t flags, st__json_put_fn put,
                     void *ctx);

#ifdef __cplusplus
}
#endif

#endif /* ST_COMMON_JSON_H */
