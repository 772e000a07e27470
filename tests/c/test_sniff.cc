// A file that is not safetensors is named by what it looks like (issue 14):
// the core's st__sniff on its own, and the message every open path gives,
// with the status the framing always gave (statuses are pinned).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "safetensors.h"

extern "C" {
#include "core/internal.h"
}
#include "testutil.h"

namespace {

using sttest::make_file;
using sttest::make_file_n;

// A string literal's bytes, embedded NULs included.
template <size_t N>
std::string lit(const char (&s)[N]) {
  return std::string(s, N - 1);
}

struct Kind {
  std::string name;
  std::string bytes;
  st_status code;       // what the framing says, as before
  const char *message;  // what the error record now says
};

// A zip as torch.save writes it: local file header, stored entry.
std::string torch_zip() {
  return lit("PK\x03\x04\x00\x00\x08\x08\x00\x00") + "archive/data.pkl" +
         std::string(64, '\0');
}

std::vector<Kind> kinds() {
  const char *zip = "not a safetensors file: a zip archive (torch.save?)";
  const char *pkl = "not a safetensors file: a pickle";
  const char *json = "not a safetensors file: JSON text (an index?)";
  const char *text = "not a safetensors file: text";
  std::string index =
      "{\n  \"metadata\": {\"total_size\": 8},\n  \"weight_map\": {\"a\": "
      "\"model-00001-of-00001.safetensors\"}\n}\n";
  return {
      {"empty", "", ST_ERR_HEADER_TOO_SMALL, "not a safetensors file: an empty file"},
      {"seven_bytes", std::string(7, '\x01'), ST_ERR_HEADER_TOO_SMALL,
       "file shorter than 8 bytes"},
      {"zip_torch_save", torch_zip(), ST_ERR_HEADER_TOO_LARGE, zip},
      {"zip_empty_archive", lit("PK\x05\x06") + std::string(18, '\0'),
       ST_ERR_HEADER_TOO_LARGE, zip},
      {"pickle_protocol_2", lit("\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01."),
       ST_ERR_HEADER_TOO_LARGE, pkl},
      // protocol 4 with a short frame: N is under the cap but past the end
      {"pickle_protocol_4_small_frame",
       lit("\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94."),
       ST_ERR_INVALID_HEADER_LENGTH, pkl},
      {"json_index", index, ST_ERR_HEADER_TOO_LARGE, json},
      {"json_array_after_spaces", "  \t[1, 2, 3]\n", ST_ERR_HEADER_TOO_LARGE, json},
      {"json_with_bom", "\xEF\xBB\xBF{\"a\": 1}", ST_ERR_HEADER_TOO_LARGE, json},
      {"text", "hello, this is a README\n", ST_ERR_HEADER_TOO_LARGE, text},
      {"text_utf8_cut_at_8", "abcde\xC3\xA9\xE2\x82\xAC more", ST_ERR_HEADER_TOO_LARGE, text},
      {"git_lfs_pointer",
       "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 12345\n",
       ST_ERR_HEADER_TOO_LARGE,
       "not a safetensors file: text (a Git LFS pointer? run git lfs pull)"},
      {"numpy_npy", lit("\x93NUMPY\x01\x00v\x00{'descr': '<f4'}"),
       ST_ERR_HEADER_TOO_LARGE, "not a safetensors file: a NumPy .npy file"},
      {"gguf", lit("GGUF\x03\x00\x00\x00") + std::string(16, '\0'),
       ST_ERR_HEADER_TOO_LARGE, "not a safetensors file: a GGUF file"},
      {"gzip", lit("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03") + "xxxx",
       ST_ERR_INVALID_HEADER_LENGTH, "not a safetensors file: gzip-compressed data"},
      // bytes we know nothing about keep the framing's own message
      {"random_binary", lit("\xff\x00\xfe\x01\xfd\x02\xfc\x03garbage"),
       ST_ERR_HEADER_TOO_LARGE, "header length over the limit"},
      {"text_with_control_byte", lit("ab\x01" "defgh ijk"), ST_ERR_HEADER_TOO_LARGE,
       "header length over the limit"},
      // a safetensors file that is only truncated is not called something else
      {"safetensors_truncated", make_file_n(100, "{}      "), ST_ERR_INVALID_HEADER_LENGTH,
       "header length points past the end of the file"},
      {"safetensors_header_over_cap", make_file_n(100000001ull, "{}"), ST_ERR_HEADER_TOO_LARGE,
       "header length over the limit"},
  };
}

class Sniff : public ::testing::TestWithParam<Kind> {};

TEST_P(Sniff, EveryOpenPathNamesWhatItIs) {
  const Kind &k = GetParam();
  st_error err;
  st_file *f = nullptr;
  std::memset(&err, 0, sizeof err);
  EXPECT_EQ(st_open_memory(k.bytes.data(), k.bytes.size(), nullptr, &f, &err), k.code);
  EXPECT_EQ(f, nullptr);
  EXPECT_STREQ(err.message, k.message) << "memory";
  EXPECT_EQ(err.offset, 0u);

  std::string path = sttest::temp_path("sniff_" + k.name);
  ASSERT_TRUE(sttest::write_bytes(path, k.bytes));
  for (st_backend b : {ST_BACKEND_MMAP, ST_BACKEND_PREAD}) {
    st_open_options o;
    st_open_options_init(&o);
    o.backend = b;
    std::memset(&err, 0, sizeof err);
    EXPECT_EQ(st_open(path.c_str(), &o, &f, &err), k.code) << b;
    EXPECT_EQ(f, nullptr);
    EXPECT_STREQ(err.message, k.message) << "backend " << b;
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, Sniff, ::testing::ValuesIn(kinds()),
                         [](const ::testing::TestParamInfo<Kind> &i) { return i.param.name; });

TEST(SniffCore, PureFunctionOfTheFirstBytes) {
  const unsigned char zip[] = {'P', 'K', 3, 4};
  EXPECT_STREQ(st__sniff(zip, sizeof zip, 1000),
               "not a safetensors file: a zip archive (torch.save?)");
  EXPECT_STREQ(st__sniff(nullptr, 0, 0), "not a safetensors file: an empty file");
  EXPECT_EQ(st__sniff(nullptr, 0, 5), nullptr);
  // fewer bytes than a magic: not called a zip ("PK" alone is text)
  EXPECT_STREQ(st__sniff(zip, 2, 1000), "not a safetensors file: text");
  const unsigned char pickle1[] = {0x80, 0x01};  // no such pickle protocol
  EXPECT_EQ(st__sniff(pickle1, sizeof pickle1, 1000), nullptr);
  // a UTF-8 sequence cut by the end of the bytes is still text; a bad one is not
  const unsigned char cut[] = {'a', 'b', 0xE2, 0x82};
  EXPECT_STREQ(st__sniff(cut, sizeof cut, 1000), "not a safetensors file: text");
  const unsigned char bad[] = {'a', 'b', 0xE2, 'c'};
  EXPECT_EQ(st__sniff(bad, sizeof bad, 1000), nullptr);
}

// A valid file never reaches the sniffer, even when its first byte is '{'
// (N = 123) or text-like: it opens.
TEST(SniffCore, ValidFileWhoseLengthLooksLikeTextOpens) {
  std::string h = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
  h.resize(123, ' ');
  std::string bytes = make_file(h, "x");
  ASSERT_EQ(bytes[0], '{');
  st_file *f = nullptr;
  ASSERT_EQ(st_open_memory(bytes.data(), bytes.size(), nullptr, &f, nullptr), ST_OK);
  st_close(f);
}

// st_sniff: the dispatch rule (could these bytes begin a safetensors file?)
// and, when not, the same words st_open gives.
TEST(SniffPublic, CouldBeginAFileOrSaysWhatItIs) {
  std::string valid = make_file("{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "x");
  const char *what = "unset";
  EXPECT_EQ(st_sniff(valid.data(), valid.size(), valid.size(), &what), 1);
  EXPECT_EQ(what, nullptr);
  // truncated: still plausible (st_open reports it); so is a header of spaces so far
  EXPECT_EQ(st_sniff(valid.data(), 12, 1u << 20, nullptr), 1);
  std::string spaces = make_file_n(1000, std::string(20, ' '));
  EXPECT_EQ(st_sniff(spaces.data(), spaces.size(), 1u << 20, nullptr), 1);
  // whitespace then not '{', N = 0 or 1, N over the cap, fewer than 9 bytes: not
  std::string notobj = make_file("  [1]");
  EXPECT_EQ(st_sniff(notobj.data(), notobj.size(), notobj.size(), &what), 0);
  EXPECT_EQ(what, nullptr);
  EXPECT_EQ(st_sniff(make_file_n(1, "{").data(), 9, 9, nullptr), 0);
  std::string over = make_file_n(ST_MAX_HEADER_SIZE + 1, "{}");
  EXPECT_EQ(st_sniff(over.data(), over.size(), over.size(), nullptr), 0);
  EXPECT_EQ(st_sniff(valid.data(), 8, valid.size(), nullptr), 0);
  EXPECT_EQ(st_sniff(nullptr, 0, 0, &what), 0);
  EXPECT_STREQ(what, "not a safetensors file: an empty file");
  // every kind the open errors name is not plausible, with the same words
  for (const Kind &k : kinds()) {
    if (std::strncmp(k.message, "not a safetensors file", 22) != 0) continue;
    what = nullptr;
    EXPECT_EQ(st_sniff(k.bytes.data(), k.bytes.size(), k.bytes.size(), &what), 0) << k.name;
    if (k.bytes.size() >= 8 || k.bytes.empty()) {
      EXPECT_STREQ(what, k.message) << k.name;
    }
  }
}

}  // namespace
