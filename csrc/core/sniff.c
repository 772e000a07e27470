/* What a file that fails the framing looks like, from its first bytes, so
 * that a zip written by torch.save or a JSON index is reported as such and
 * not as "header length over the limit". A pure function of bytes the
 * caller already has: the I/O layer reads them, this layer only looks. */
#include <string.h>

#include "internal.h"

static int starts(const unsigned char *p, size_t n, const char *magic) {
  size_t m = strlen(magic);
  return n >= m && memcmp(p, magic, m) == 0;
}

/* Plain text: no control bytes but whitespace, and UTF-8 that is well formed
 * except for a sequence cut by the end of what we were given. */
static int is_text(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] < 0x20 && p[i] != '\t' && p[i] != '\n' && p[i] != '\r') return 0;
  size_t bad = st__utf8_check(p, n);
  if (bad == n) return 1;
  /* a lead byte in the last 3 whose continuation bytes are all there are */
  if (n - bad > 3 || (p[bad] & 0xC0) != 0xC0) return 0;
  for (size_t i = bad + 1; i < n; i++)
    if ((p[i] & 0xC0) != 0x80) return 0;
  return 1;
}

const char *st__sniff(const unsigned char *p, size_t n, uint64_t file_size) {
  if (file_size == 0) return "not a safetensors file: an empty file";
  if (p == NULL || n == 0) return NULL;
  if (starts(p, n, "PK\x03\x04") || starts(p, n, "PK\x05\x06"))
    return "not a safetensors file: a zip archive (torch.save?)";
  if (n >= 2 && p[0] == 0x80 && p[1] >= 2 && p[1] <= 5)
    return "not a safetensors file: a pickle";
  if (starts(p, n, "\x93NUMPY")) return "not a safetensors file: a NumPy .npy file";
  if (starts(p, n, "GGUF")) return "not a safetensors file: a GGUF file";
  if (starts(p, n, "\x89HDF")) return "not a safetensors file: an HDF5 file";
  if (starts(p, n, "\x1f\x8b")) return "not a safetensors file: gzip-compressed data";
  if (starts(p, n, "version ")) /* "version https://git-lfs.github.com/spec/v1" */
    return "not a safetensors file: text (a Git LFS pointer? run git lfs pull)";
  size_t i = 0;
  if (starts(p, n, "\xEF\xBB\xBF")) i = 3;
  if (!is_text(p + i, n - i)) return NULL;
  while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) i++;
  if (i < n && (p[i] == '{' || p[i] == '['))
    return "not a safetensors file: JSON text (an index?)";
  return "not a safetensors file: text";
}

int st_sniff(const void *head, size_t len, uint64_t file_size, const char **what) {
  const unsigned char *p = head;
  if (what != NULL) *what = NULL;
  if (p == NULL) len = 0;
  if (len >= 9) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | p[i];
    if (n >= 2 && n <= ST_MAX_HEADER_SIZE) {
      size_t i = 8, end = len - 8 < n ? len : (size_t)(8 + n);
      while (i < end && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n')) i++;
      /* only whitespace so far is plausible if the header goes on */
      if (i == end ? len - 8 < n : p[i] == '{') return 1;
    }
  }
  if (what != NULL) *what = st__sniff(p, len, file_size);
  return 0;
}
