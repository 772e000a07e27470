// The reader's verdict on every parsing row of shared/ROBUSTNESS.md: one
// table row per case, each asserting the status, the byte offset in the file
// and (where the error names a tensor) the name. Every row runs through all
// open paths: memory, path with mmap, path with pread, and a descriptor.
//
// Set ST_READER_DUMP=<dir> to write every case to <dir>/<row>.<verdict> so a
// script can replay them through the reference package.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "safetensors.h"
#include "testutil.h"

namespace {

using sttest::make_file;
using sttest::make_file_n;

constexpr uint64_t kNone = ST_NO_OFFSET;

// 8 + the position of needle in header (the nth occurrence, 0-based).
uint64_t at(const std::string &header, const std::string &needle, int nth = 0) {
  size_t p = header.find(needle);
  for (int i = 0; i < nth && p != std::string::npos; i++) p = header.find(needle, p + 1);
  EXPECT_NE(p, std::string::npos) << needle;
  return 8 + static_cast<uint64_t>(p);
}

std::string entry(const std::string &dtype, const std::string &shape, uint64_t b, uint64_t e,
                  const std::string &extra = "") {
  return "{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(b) + "," + std::to_string(e) + "]" + extra + "}";
}

// One valid U8 tensor "t" of one byte; the header text lets rows splice in.
const std::string kT = "{\"t\":" + entry("U8", "[1]", 0, 1) + "}";

struct Row {
  std::string name;
  std::string bytes;
  st_status code;
  uint64_t offset;
  std::string err_name;  // checked when code is not ST_OK and non-empty
  std::function<void(st_open_options &)> tweak;
};

std::vector<Row> rows() {
  std::vector<Row> r;
  auto ok = [&](const std::string &n, const std::string &bytes,
                std::function<void(st_open_options &)> tw = nullptr) {
    r.push_back({n, bytes, ST_OK, kNone, "", tw});
  };
  auto bad = [&](const std::string &n, const std::string &bytes, st_status c, uint64_t off,
                 const std::string &nm = "", std::function<void(st_open_options &)> tw = nullptr) {
    r.push_back({n, bytes, c, off, nm, tw});
  };
  const std::string one = "x";

  // ---- Framing -----------------------------------------------------------
  for (size_t len = 0; len < 8; len++)
    bad("short_" + std::to_string(len), std::string(len, '\x01'), ST_ERR_HEADER_TOO_SMALL, 0);
  bad("n_zero", make_file(""), ST_ERR_HEADER_DESERIALIZATION, 8);
  bad("n_over_cap", make_file_n(100000001ull, "{}"), ST_ERR_HEADER_TOO_LARGE, 0);
  bad("n_at_cap_past_end", make_file_n(100000000ull, "{}"), ST_ERR_INVALID_HEADER_LENGTH, 0);
  bad("n_max_u64", make_file_n(UINT64_MAX, "{}"), ST_ERR_HEADER_TOO_LARGE, 0);
  bad("n_past_end", make_file_n(100, "{}      "), ST_ERR_INVALID_HEADER_LENGTH, 0);
  bad("n_one_past_end", make_file_n(9, "{}      "), ST_ERR_INVALID_HEADER_LENGTH, 0);
  bad("git_lfs_pointer",
      "version https://git-lfs.github.com/spec/v1\noid sha256:"
      "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n",
      ST_ERR_HEADER_TOO_LARGE, 0);
  bad("zip_torch_save", std::string("PK\x03\x04\x14\x00\x00\x00\x08\x00", 10) + std::string(40, 'z'),
      ST_ERR_HEADER_TOO_LARGE, 0);
  bad("header_limit_lowered", make_file(kT, one), ST_ERR_HEADER_TOO_LARGE, 0,
      "", [](st_open_options &o) { o.max_header_size = 8; });
  ok("header_at_lowered_limit", make_file(kT, one),
     [](st_open_options &o) { o.max_header_size = kT.size(); });

  // ---- Bytes ----------------------------------------------------------------
  {
    std::string h = "{\"t\x80\":" + entry("U8", "[1]", 0, 1) + "}";
    bad("utf8_stray_continuation", make_file(h, one), ST_ERR_INVALID_HEADER, at(h, "\x80"));
    h = "{\"t\xC0\xAF\":" + entry("U8", "[1]", 0, 1) + "}";
    bad("utf8_overlong", make_file(h, one), ST_ERR_INVALID_HEADER, at(h, "\xC0"));
    h = "{\"t\xED\xA0\x80\":" + entry("U8", "[1]", 0, 1) + "}";
    bad("utf8_encoded_surrogate", make_file(h, one), ST_ERR_INVALID_HEADER, at(h, "\xED"));
    h = kT + "\xE2\x82";
    bad("utf8_cut_at_end", make_file(h, one), ST_ERR_INVALID_HEADER, at(h, "\xE2"));
    h = "\xEF\xBB\xBF" + kT;
    bad("byte_order_mark", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, 8);
    h = kT + std::string(6, '\0');
    bad("nul_padding", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, 8 + kT.size());
    ok("space_padding", make_file(kT + "       ", one));
    ok("whitespace_padding", make_file(kT + " \t\r\n", one));
    ok("leading_whitespace", make_file(" \t\r\n" + kT, one));
    h = "\f" + kT;
    bad("form_feed_is_not_whitespace", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, 8);
    h = kT + "x";
    bad("garbage_after_root", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, 8 + kT.size());
    h = kT + "{}";
    bad("second_value_after_root", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, 8 + kT.size());
  }

  // ---- JSON syntax: the leniencies of jsmn-style tokenizers -------------
  {
    std::string e = entry("U8", "[1]", 0, 1);
    std::string h = "{\"t\"::" + e + "}";
    bad("stray_colon", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "::") + 1);
    h = "{,\"t\":" + e + "}";
    bad("stray_comma_first", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, ","));
    h = "{\"t\":" + e + ",}";
    bad("trailing_comma_object", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, ",}") + 1);
    h = "{\"t\":" + entry("U8", "[1,]", 0, 1) + "}";
    bad("trailing_comma_array", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, ",]") + 1);
    h = "{\"t\":{\"dtype\":\"U8\",,\"shape\":[1],\"data_offsets\":[0,1]}}";
    bad("double_comma", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, ",,") + 1);
    h = "{\"t\":{\"dtype\":\"U8\" \"shape\":[1],\"data_offsets\":[0,1]}}";
    bad("missing_comma", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\"shape"));
    h = "{\"t\":" + entry("U8", "[1 1]", 0, 1) + "}";
    bad("missing_comma_array", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "1 1") + 2);
    h = "{\"t\" " + e + "}";
    bad("missing_colon", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\" {") + 2);
    h = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}";
    bad("unclosed_object", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, 8 + h.size());
    h = "{\"t\":" + e + "]";
    bad("mismatched_bracket", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, 8 + h.size() - 1);
    h = "{\"t";
    bad("unterminated_string", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, 8 + h.size());
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":tru") + "}";
    bad("primitive_tru", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "tru}") + 3);
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":True") + "}";
    bad("primitive_True", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "True"));
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":nulls") + "}";
    bad("primitive_nulls", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "nulls") + 4);
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":abc") + "}";
    bad("primitive_bare_word", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "abc"));
    h = "{t:" + e + "}";
    bad("unquoted_key", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, 9);
    h = "{'t':" + e + "}";
    bad("single_quotes", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, 9);
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":{1:2}") + "}";
    bad("non_string_key_nested", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "{1") + 1);
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":[1:2]") + "}";
    bad("colon_in_array", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "1:2") + 1);
  }

  // ---- Strings -------------------------------------------------------------
  {
    auto named = [](const std::string &raw) { return "{\"" + raw + "\":" + entry("U8", "[1]", 0, 1) + "}"; };
    std::string h = named("a\\x");
    bad("bad_escape", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\\x"));
    h = named("a\\u12G4");
    bad("bad_u_hex", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\\u"));
    h = named("a\\u12");
    bad("short_u_escape", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\\u"));
    h = named("a\\ud800");
    bad("lone_high_surrogate", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\\u"));
    h = named("a\\udc00");
    bad("lone_low_surrogate", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\\u"));
    h = named("a\\ud800\\u0041");
    bad("mismatched_surrogate", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\\u"));
    h = named("a\\ud800\\ud800");
    bad("two_high_surrogates", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\\u"));
    ok("surrogate_pair", make_file(named("a\\ud83d\\ude00"), one));
    h = named("a\x01");
    bad("raw_control_char", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\x01"));
    h = named("a\tb");
    bad("raw_tab_in_string", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\t"));
    h = named("a\x7f");
    ok("raw_del_in_string", make_file(h, one));
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":\"\\q\"") + "}";
    bad("bad_escape_in_ignored_field", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\\q"));
    ok("all_escapes", make_file(named("\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9"), one));
    // Field names and __metadata__ spelled with escapes are the same keys
    // (decoded before they are compared); a same-length near miss is not.
    ok("escaped_field_names",
       make_file("{\"\\u005f_metadata__\":{},\"t\":{\"\\u0064type\":\"U8\",\"sh\\u0061pe\":[1],"
                 "\"data_offset\\u0073\":[0,1]}}", one));
    h = "{\"t\":{\"dtypf\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    bad("near_miss_field_name", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION,
        at(h, "{\"dtypf"));
  }

  // ---- Root and nesting ----------------------------------------------------
  {
    bad("root_array", make_file("[]"), ST_ERR_HEADER_DESERIALIZATION, 8);
    bad("root_string", make_file("\"s\""), ST_ERR_HEADER_DESERIALIZATION, 8);
    bad("root_number", make_file("  1"), ST_ERR_HEADER_DESERIALIZATION, 10);
    bad("root_null", make_file("null"), ST_ERR_HEADER_DESERIALIZATION, 8);
    bad("whitespace_only", make_file("        "), ST_ERR_HEADER_DESERIALIZATION, 16);
    std::string pre = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":";
    std::string deep = pre + std::string(1000000, '[') + std::string(1000000, ']') + "}}";
    // root = depth 1, entry = 2, so the 63rd '[' would be depth 65.
    bad("million_deep_nesting", make_file(deep, one), ST_ERR_LIMIT, 8 + pre.size() + 62);
    std::string deep_open = pre + std::string(1000000, '[');
    bad("million_deep_unclosed", make_file(deep_open, one), ST_ERR_LIMIT, 8 + pre.size() + 62);
    std::string max_ok = pre + std::string(62, '[') + std::string(62, ']') + "}}";
    ok("depth_64_accepted", make_file(max_ok, one));
    std::string d100 = pre + std::string(98, '[') + std::string(98, ']') + "}}";
    bad("depth_100_over_default", make_file(d100, one), ST_ERR_LIMIT, 8 + pre.size() + 62);
    ok("depth_100_with_raised_limit", make_file(d100, one),
       [](st_open_options &o) { o.max_depth = 128; });
    std::string objs;
    for (int i = 0; i < 300; i++) objs += "{\"a\":";
    objs += "1";
    objs += std::string(300, '}');
    std::string d300 = pre + objs + "}}";
    ok("depth_302_with_raised_limit", make_file(d300, one),
       [](st_open_options &o) { o.max_depth = 400; });
    bad("depth_lowered_to_1", make_file(kT, one), ST_ERR_LIMIT, 13,
        "", [](st_open_options &o) { o.max_depth = 1; });
  }

  // ---- Numbers ---------------------------------------------------------------
  {
    auto shp = [](const std::string &s) { return "{\"t\":" + entry("U8", s, 0, 1) + "}"; };
    std::string h = shp("[-1]");
    bad("shape_negative", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "-1"));
    h = shp("[-0]");
    bad("shape_negative_zero", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "-0"));
    h = shp("[1.0]");
    bad("shape_fraction", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "1.0"));
    h = shp("[1e0]");
    bad("shape_exponent", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "1e0"));
    h = shp("[01]");
    bad("shape_leading_zero", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "01") + 1);
    h = shp("[+1]");
    bad("shape_plus", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "+1"));
    h = shp("[18446744073709551616]");
    bad("shape_2_pow_64", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "184"));
    h = shp("[1.]");
    bad("shape_dot_no_digits", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "1.") + 2);
    h = shp("[1e]");
    bad("shape_e_no_digits", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "1e") + 2);
    h = shp("[-]");
    bad("shape_minus_alone", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "-") + 1);
    h = shp("[\"1\"]");
    bad("shape_string_dim", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\"1\""));
    h = shp("[true]");
    bad("shape_bool_dim", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "true"));
    h = shp("[null]");
    bad("shape_null_dim", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "null"));
    h = shp("[[1]]");
    bad("shape_nested_array", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "[[") + 1);
    h = shp("[" + std::string(100000, '7') + "]");
    bad("shape_100000_digits", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "777"));
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":" + std::string(100000, '9')) + "}";
    bad("ignored_100000_digits", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "999"));
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":1e309") + "}";
    bad("ignored_number_overflows_double", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION,
        at(h, "1e309"));
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":[1e308,-1.5e-400,0e99999,18446744073709551616]") + "}";
    ok("ignored_numbers_in_range", make_file(h, one));
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":-1.7976931348623158e308") + "}";
    bad("ignored_number_just_over_double", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION,
        at(h, "-1.79"));
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":[1.7976931348623157e308,0.00017976931348623157e312]") + "}";
    ok("ignored_number_at_double_max", make_file(h, one));
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":-0.5E+3") + "}";
    ok("ignored_negative_fraction", make_file(h, one));
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":0.") + "}";
    bad("ignored_number_trailing_dot", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION,
        at(h, "0.}") + 2);
    h = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,-1]}}";
    bad("offset_negative", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "-1"));
    h = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1.0]}}";
    bad("offset_fraction", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "1.0"));
  }

  // ---- Entries ---------------------------------------------------------------
  {
    std::string h = "{\"t\":{\"shape\":[1],\"data_offsets\":[0,1]}}";
    bad("missing_dtype", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "{\"shape"), "t");
    h = "{\"\\u0061\\u00e9\":{\"shape\":[1],\"data_offsets\":[0,1]}}";
    bad("missing_dtype_escaped_name", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION,
        at(h, "{\"shape"), "a\xC3\xA9");
    h = "{\"t\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}";
    bad("missing_shape", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "{\"dtype"), "t");
    h = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1]}}";
    bad("missing_offsets", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "{\"dtype"), "t");
    h = "{\"t\":{\"dtype\":8,\"shape\":[1],\"data_offsets\":[0,1]}}";
    bad("dtype_number", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "8,"), "t");
    h = "{\"t\":{\"dtype\":\"U8\",\"shape\":1,\"data_offsets\":[0,1]}}";
    bad("shape_number", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "1,"), "t");
    h = "{\"t\":{\"dtype\":\"U8\",\"shape\":{},\"data_offsets\":[0,1]}}";
    bad("shape_object", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "{},"), "t");
    h = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":\"0,1\"}}";
    bad("offsets_string", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\"0,1"), "t");
    h = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1]}}";
    bad("offsets_one_element", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "[1]}"), "t");
    h = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}";
    bad("offsets_three_elements", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "[0,1,2"), "t");
    h = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[]}}";
    bad("offsets_empty", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "[]"), "t");
    h = "{\"t\":" + entry("F31", "[1]", 0, 1) + "}";
    bad("dtype_unknown", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\"F31"), "t");
    h = "{\"t\":" + entry("u8", "[1]", 0, 1) + "}";
    bad("dtype_wrong_case", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\"u8"), "t");
    // Found by the differential test: a dtype spelled entirely with \u escapes
    // (66 raw bytes for the 11-byte F8_E4M3FNUZ) is still that dtype.
    h = "{\"t\":" + entry("\\u0046\\u0038\\u005f\\u0045\\u0034\\u004d\\u0033\\u0046\\u004e\\u0055\\u005a",
                        "[1]", 0, 1) + "}";
    ok("dtype_fully_escaped_longest", make_file(h, one));
    h = "{\"t\":" + entry("\\u0046\\u0038\\u005f\\u0045\\u0034\\u004d\\u0033\\u0046\\u004e\\u0055\\u005a\\u005a",
                        "[1]", 0, 1) + "}";
    bad("dtype_fully_escaped_too_long", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION,
        at(h, "\"\\u0046"), "t");
    h = "{\"t\":" + entry("U8 ", "[1]", 0, 1) + "}";
    bad("dtype_trailing_space", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\"U8 "), "t");
    h = "{\"t\":" + entry(std::string(40, 'F'), "[1]", 0, 1) + "}";
    bad("dtype_long", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\"FFF"), "t");
    h = "{\"t\":{\"dtype\":\"\\u0055\\u0038\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    ok("dtype_escaped_spelling", make_file(h, one));
    h = "{\"t\":{\"dt\\u0079pe\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    ok("field_escaped_spelling", make_file(h, one));
    h = "{\"t\":[1]}";
    bad("entry_array", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "[1]"), "t");
    h = "{\"t\":null}";
    bad("entry_null", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "null"), "t");
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"extra\":{\"a\":[1,2,{\"b\":null}]},\"z\":\"s\"") + "}";
    ok("unknown_fields_ignored", make_file(h, one));

    // Shape products and bit counts.
    h = "{\"t\":" + entry("U8", "[4294967296,4294967296]", 0, 0) + "}";
    bad("numel_overflow", make_file(h), ST_ERR_VALIDATION_OVERFLOW, 9, "t");
    h = "{\"t\":" + entry("U8", "[9223372036854775808,2,0]", 0, 0) + "}";
    bad("numel_overflow_then_zero", make_file(h), ST_ERR_VALIDATION_OVERFLOW, 9, "t");
    h = "{\"t\":" + entry("U8", "[9223372036854775809,2]", 0, 2) + "}";
    bad("numel_wraps_to_stored_size", make_file(h, "ab"), ST_ERR_VALIDATION_OVERFLOW, 9, "t");
    h = "{\"t\":" + entry("F32", "[4611686018427387904]", 0, 0) + "}";
    bad("bits_overflow", make_file(h), ST_ERR_VALIDATION_OVERFLOW, 9, "t");
    h = "{\"t\":" + entry("U8", "[0,18446744073709551615]", 0, 0) + "}";
    ok("zero_dim_with_huge_dim", make_file(h));
    h = "{\"t\":" + entry("F4", "[3]", 0, 1) + "}";
    bad("f4_odd_count", make_file(h, one), ST_ERR_MISALIGNED_SLICE, 9, "t");
    h = "{\"t\":" + entry("F6_E2M3", "[2]", 0, 1) + "}";
    bad("f6_two_elements", make_file(h, one), ST_ERR_MISALIGNED_SLICE, 9, "t");
    h = "{\"t\":" + entry("F4", "[2]", 0, 1) + "}";
    ok("f4_even_count", make_file(h, one));
    h = "{\"t\":" + entry("F6_E3M2", "[2,2]", 0, 3) + "}";
    ok("f6_four_elements", make_file(h, "abc"));
    h = "{\"t\":" + entry("F32", "[2]", 0, 4) + "}";
    bad("byte_length_short", make_file(h, "abcd"), ST_ERR_INVALID_TENSOR_INFO, 9, "t");
    h = "{\"t\":" + entry("F32", "[1]", 0, 8) + "}";
    bad("byte_length_long", make_file(h, "abcdefgh"), ST_ERR_INVALID_TENSOR_INFO, 9, "t");

    // Ranges.
    std::string a = "\"a\":" + entry("U8", "[4]", 0, 4);
    h = "{" + a + ",\"b\":" + entry("U8", "[4]", 2, 6) + "}";
    bad("ranges_overlap", make_file(h, "123456"), ST_ERR_INVALID_OFFSET, at(h, "\"b\""), "b");
    h = "{" + a + ",\"b\":" + entry("U8", "[4]", 0, 4) + "}";
    bad("ranges_repeat", make_file(h, "1234"), ST_ERR_INVALID_OFFSET, at(h, "\"b\""), "b");
    h = "{" + a + ",\"b\":" + entry("U8", "[4]", 5, 9) + "}";
    bad("ranges_hole", make_file(h, "123456789"), ST_ERR_INVALID_OFFSET, at(h, "\"b\""), "b");
    h = "{\"a\":" + entry("U8", "[4]", 1, 5) + "}";
    bad("ranges_not_from_zero", make_file(h, "12345"), ST_ERR_INVALID_OFFSET, 9, "a");
    h = "{\"a\":" + entry("U8", "[0]", 4, 0) + "}";
    bad("ranges_backwards", make_file(h, "1234"), ST_ERR_INVALID_OFFSET, 9, "a");
    h = "{\"a\":" + entry("U8", "[8]", 0, 8) + "}";
    bad("ranges_past_data", make_file(h, "1234"), ST_ERR_INCOMPLETE_BUFFER, 8 + h.size() + 8);
    h = "{\"a\":" + entry("U8", "[4]", 0, 4) + "}";
    bad("trailing_bytes_polyglot", make_file(h, "12345"), ST_ERR_INCOMPLETE_BUFFER, 8 + h.size() + 4);
    ok("trailing_bytes_allowed", make_file(h, "12345"),
       [](st_open_options &o) { o.flags |= ST_OPEN_ALLOW_TRAILING_BYTES; });
    h = "{\"a\":" + entry("U8", "[8]", 0, 8) + "}";
    bad("short_data_with_trailing_allowed", make_file(h, "1234"), ST_ERR_INCOMPLETE_BUFFER,
        8 + h.size() + 8, "", [](st_open_options &o) { o.flags |= ST_OPEN_ALLOW_TRAILING_BYTES; });
    bad("empty_table_with_data", make_file("{}", "x"), ST_ERR_INCOMPLETE_BUFFER, 10);
    ok("empty_table", make_file("{}      "));
    ok("empty_table_trailing_allowed", make_file("{}", "xyz"),
       [](st_open_options &o) { o.flags |= ST_OPEN_ALLOW_TRAILING_BYTES; });
    h = "{\"z\":" + entry("U8", "[0]", 0, 0) + ",\"b\":" + entry("U8", "[4]", 0, 4) +
        ",\"c\":" + entry("U8", "[2,0]", 4, 4) + "}";
    ok("zero_size_sharing_offsets", make_file(h, "1234"));
    h = "{\"s\":" + entry("F32", "[]", 0, 4) + "}";
    ok("scalar", make_file(h, "abcd"));
    h = "{\"b\":" + entry("BOOL", "[3]", 0, 3) + "}";
    ok("bool_values_unchecked", make_file(h, "\x07\xff\x02"));
  }

  // ---- Keys and metadata (stricter than the reference) ----------------------
  {
    std::string e1 = entry("U8", "[1]", 0, 1), e2 = entry("U8", "[1]", 1, 2);
    std::string h = "{\"a\":" + e1 + ",\"a\":" + e2 + "}";
    bad("duplicate_name", make_file(h, "12"), ST_ERR_DUPLICATE_KEY, at(h, "\"a\"", 1), "a");
    h = "{\"a\":" + e1 + ",\"a\":" + e1 + "}";
    bad("duplicate_name_same_range", make_file(h, "1"), ST_ERR_DUPLICATE_KEY, at(h, "\"a\"", 1), "a");
    h = "{\"a\":" + entry("F4", "[]", 0, 0) + ",\"a\":" + e1 + "}";
    bad("duplicate_name_first_inconsistent", make_file(h, "1"), ST_ERR_DUPLICATE_KEY,
        at(h, "\"a\"", 1), "a");
    h = "{\"\\u0061\":" + e1 + ",\"a\":" + e2 + "}";
    bad("duplicate_name_escaped", make_file(h, "12"), ST_ERR_DUPLICATE_KEY, at(h, "\"a\""), "a");
    h = "{\"__metadata__\":{},\"t\":" + e1 + ",\"__metadata__\":null}";
    bad("duplicate_metadata", make_file(h, one), ST_ERR_DUPLICATE_KEY, at(h, "\"__metadata__\"", 1));
    h = "{\"__metadata__\":{\"k\":\"1\",\"j\":\"2\",\"k\":\"3\"},\"t\":" + e1 + "}";
    bad("duplicate_metadata_key", make_file(h, one), ST_ERR_DUPLICATE_KEY, at(h, "\"k\"", 1), "k");
    h = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"dtype\":\"U8\",\"data_offsets\":[0,1]}}";
    bad("duplicate_field", make_file(h, one), ST_ERR_DUPLICATE_KEY, at(h, "\"dtype\"", 1), "t");
    h = "{\"__metadata__\":{\"k\":1},\"t\":" + e1 + "}";
    bad("metadata_value_number", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "1}"));
    h = "{\"__metadata__\":{\"k\":null},\"t\":" + e1 + "}";
    bad("metadata_value_null", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "null"));
    h = "{\"__metadata__\":{\"k\":{\"a\":\"b\"}},\"t\":" + e1 + "}";
    bad("metadata_value_object", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "{\"a\""));
    h = "{\"__metadata__\":[],\"t\":" + e1 + "}";
    bad("metadata_array", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "[]"));
    h = "{\"__metadata__\":\"x\",\"t\":" + e1 + "}";
    bad("metadata_string", make_file(h, one), ST_ERR_HEADER_DESERIALIZATION, at(h, "\"x\""));
    ok("metadata_null", make_file("{\"__metadata__\":null,\"t\":" + e1 + "}", one));
    ok("metadata_empty", make_file("{\"__metadata__\":{},\"t\":" + e1 + "}", one));
    ok("metadata_escaped_spelling",
       make_file("{\"__m\\u0065tadata__\":{\"k\":\"v\"},\"t\":" + e1 + "}", one));
    h = "{\"__m\\u0065tadata__\":{\"k\":\"v\"},\"t\":" + e1 + ",\"__metadata__\":{}}";
    bad("metadata_escaped_duplicate", make_file(h, one), ST_ERR_DUPLICATE_KEY,
        at(h, "\"__metadata__\""));
    h = "{\"a\\u0000b\":" + e1 + "}";
    bad("nul_in_name", make_file(h, one), ST_ERR_NUL_IN_STRING, at(h, "\\u0000"));
    h = "{\"__metadata__\":{\"k\\u0000\":\"v\"},\"t\":" + e1 + "}";
    bad("nul_in_metadata_key", make_file(h, one), ST_ERR_NUL_IN_STRING, at(h, "\\u0000"));
    h = "{\"__metadata__\":{\"k\":\"v\\u0000\"},\"t\":" + e1 + "}";
    bad("nul_in_metadata_value", make_file(h, one), ST_ERR_NUL_IN_STRING, at(h, "\\u0000"));
    h = "{\"t\":" + entry("U8", "[1]", 0, 1, ",\"x\":\"\\u0000\"") + "}";
    ok("nul_in_ignored_field", make_file(h, one));
    ok("empty_name", make_file("{\"\":" + e1 + "}", one));
    ok("unicode_names", make_file("{\"\xC3\xA9\":" + e1 + ",\"\\u00e9x\":" + e2 +
                                  ",\"\xF0\x9F\x98\x80\":" + entry("U8", "[1]", 2, 3) + "}", "123"));
    std::string rank65 = "[";
    for (int i = 0; i < 65; i++) rank65 += i ? ",1" : "1";
    rank65 += "]";
    h = "{\"t\":" + entry("U8", rank65, 0, 1) + "}";
    bad("rank_65", make_file(h, one), ST_ERR_LIMIT, at(h, "[1,"), "t");
    std::string rank64 = rank65.substr(0, rank65.size() - 3) + "]";
    ok("rank_64", make_file("{\"t\":" + entry("U8", rank64, 0, 1) + "}", one));
    h = "{\"t\":" + entry("U8", "[1,1,1]", 0, 1) + "}";
    bad("rank_limit_lowered", make_file(h, one), ST_ERR_LIMIT, at(h, "[1,"), "t",
        [](st_open_options &o) { o.max_rank = 2; });
    h = "{\"a\":" + e1 + ",\"b\":" + e2 + "}";
    bad("tensor_count_limit", make_file(h, "12"), ST_ERR_LIMIT, at(h, "\"b\""), "b",
        [](st_open_options &o) { o.max_tensors = 1; });
    ok("tensor_count_at_limit", make_file(h, "12"), [](st_open_options &o) { o.max_tensors = 2; });
    h = "{\"abcdef\":" + e1 + "}";
    bad("name_length_limit", make_file(h, one), ST_ERR_LIMIT, 9, "abcdef",
        [](st_open_options &o) { o.max_name_len = 5; });
    h = "{\"\\u00e9\\u00e9\":" + e1 + "}";
    ok("name_length_counts_decoded_bytes", make_file(h, one),
       [](st_open_options &o) { o.max_name_len = 4; });
    h = "{\"__metadata__\":{\"k\":\"v\"}}";
    ok("metadata_only", make_file(h));
  }
  return r;
}

st_status open_with(const Row &row, int how, st_file **f, st_error *err,
                    const std::string &path) {
  st_open_options o;
  st_open_options_init(&o);
  if (row.tweak) row.tweak(o);
  switch (how) {
    case 0:
      return st_open_memory(row.bytes.data(), row.bytes.size(), &o, f, err);
    case 1:
      o.backend = ST_BACKEND_MMAP;
      return st_open(path.c_str(), &o, f, err);
    case 2:
      o.backend = ST_BACKEND_PREAD;
      return st_open(path.c_str(), &o, f, err);
    default: {
      int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return ST_ERR_IO;
      st_status s = st_open_fd(fd, &o, f, err);
      ::close(fd);
      return s;
    }
  }
}

class Format : public ::testing::TestWithParam<Row> {};

TEST_P(Format, Verdict) {
  const Row &row = GetParam();
  const char *dump = std::getenv("ST_READER_DUMP");
  if (dump != nullptr)
    sttest::write_bytes(std::string(dump) + "/" + row.name + "." + st_status_name(row.code),
                        row.bytes);
  std::string path = sttest::temp_path("fmt");
  ASSERT_TRUE(sttest::write_bytes(path, row.bytes));
  static const char *kHow[] = {"memory", "path-mmap", "path-pread", "fd"};
  for (int how = 0; how < 4; how++) {
    SCOPED_TRACE(kHow[how]);
    st_file *f = reinterpret_cast<st_file *>(0x1);
    st_error err;
    std::memset(&err, 0xAB, sizeof err);
    st_status s = open_with(row, how, &f, &err, path);
    EXPECT_EQ(s, row.code) << st_status_name(s) << " vs " << st_status_name(row.code) << ": "
                           << (s != ST_OK ? err.message : "");
    EXPECT_EQ(err.code, s);
    ASSERT_NE(err.message, nullptr);
    if (s == ST_OK) {
      ASSERT_NE(f, nullptr);
      st_close(f);
      continue;
    }
    EXPECT_EQ(f, nullptr);
    EXPECT_EQ(err.offset, row.offset) << err.message;
    EXPECT_EQ(err.sys_errno, 0);
    if (!row.err_name.empty()) {
      EXPECT_STREQ(err.name, row.err_name.c_str());
      EXPECT_EQ(err.name_len, row.err_name.size());
    }
  }
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Rows, Format, ::testing::ValuesIn(rows()),
                         [](const ::testing::TestParamInfo<Row> &pi) { return pi.param.name; });

// Every format status (4..16) is produced by at least one row.
TEST(FormatCoverage, EveryFormatStatusHasARow) {
  std::vector<bool> seen(ST_ERR_FILE_CHANGED + 1, false);
  for (const Row &r : rows()) seen[r.code] = true;
  for (int c = ST_ERR_HEADER_TOO_SMALL; c <= ST_ERR_LIMIT; c++)
    EXPECT_TRUE(seen[static_cast<size_t>(c)]) << st_status_name(static_cast<st_status>(c));
}

// The accepted rows decode to exactly what the header says.
TEST(FormatValues, UnicodeNamesHaveExactBytes) {
  std::string e1 = entry("U8", "[1]", 0, 1);
  std::string h = "{\"\":" + e1 + ",\"\xC3\xA9\":" + entry("U8", "[1]", 1, 2) +
                  ",\"\\u00e9x\":" + entry("U8", "[1]", 2, 3) + ",\"\\ud83d\\ude00\":" +
                  entry("U8", "[1]", 3, 4) + ",\"q\\\"\\\\\\/\\n\":" + entry("U8", "[1]", 4, 5) + "}";
  std::string bytes = make_file(h, "12345");
  st_file *f = nullptr;
  ASSERT_EQ(st_open_memory(bytes.data(), bytes.size(), nullptr, &f, nullptr), ST_OK);
  const std::vector<std::string> want = {"", "\xC3\xA9", "\xC3\xA9x", "\xF0\x9F\x98\x80",
                                         std::string("q\"\\/\n")};
  ASSERT_EQ(st_tensor_count(f), want.size());
  for (size_t i = 0; i < want.size(); i++) {
    st_tensor_info ti;
    ASSERT_EQ(st_tensor_get(f, i, &ti), ST_OK);
    EXPECT_EQ(std::string(ti.name, ti.name_len), want[i]);
    EXPECT_EQ(ti.name[ti.name_len], '\0');
    size_t idx;
    ASSERT_EQ(st_tensor_find(f, want[i].data(), want[i].size(), &idx), ST_OK);
    EXPECT_EQ(idx, i);
  }
  st_close(f);
}

TEST(FormatValues, EscapedMetadataSpellingIsMetadata) {
  std::string h = "{\"__m\\u0065tadata__\":{\"k\\n\":\"v\\u00e9\"},\"t\":" +
                  entry("U8", "[1]", 0, 1) + "}";
  std::string bytes = make_file(h, "x");
  st_file *f = nullptr;
  ASSERT_EQ(st_open_memory(bytes.data(), bytes.size(), nullptr, &f, nullptr), ST_OK);
  EXPECT_EQ(st_tensor_count(f), 1u);
  ASSERT_EQ(st_metadata_count(f), 1u);
  const char *v;
  size_t vl;
  ASSERT_EQ(st_metadata_find(f, "k\n", 2, &v, &vl), ST_OK);
  EXPECT_EQ(std::string(v, vl), "v\xC3\xA9");
  st_close(f);
}

TEST(FormatValues, MetadataNullMeansAbsent) {
  std::string bytes = make_file("{\"__metadata__\":null,\"t\":" + entry("U8", "[1]", 0, 1) + "}", "x");
  st_file *f = nullptr;
  ASSERT_EQ(st_open_memory(bytes.data(), bytes.size(), nullptr, &f, nullptr), ST_OK);
  EXPECT_EQ(st_metadata_count(f), 0u);
  EXPECT_EQ(st_metadata_find(f, "k", 1, nullptr, nullptr), ST_ERR_NOT_FOUND);
  st_close(f);
}

TEST(FormatValues, ScalarsAndZeroSize) {
  std::string h = "{\"s\":" + entry("F32", "[]", 0, 4) + ",\"z\":" + entry("F64", "[0,3]", 4, 4) + "}";
  std::string bytes = make_file(h, "abcd");
  st_file *f = nullptr;
  ASSERT_EQ(st_open_memory(bytes.data(), bytes.size(), nullptr, &f, nullptr), ST_OK);
  st_tensor_info ti;
  ASSERT_EQ(st_tensor_get(f, 0, &ti), ST_OK);
  EXPECT_EQ(ti.rank, 0u);
  EXPECT_NE(ti.shape, nullptr);
  EXPECT_EQ(ti.numel, 1u);
  ASSERT_EQ(st_tensor_get(f, 1, &ti), ST_OK);
  EXPECT_EQ(ti.rank, 2u);
  EXPECT_EQ(ti.numel, 0u);
  EXPECT_EQ(ti.shape[1], 3u);
  EXPECT_EQ(ti.dtype, ST_F64);
  st_close(f);
}

TEST(FormatValues, NullErrorRecordIsFine) {
  std::string bytes = make_file("[]");
  st_file *f = nullptr;
  EXPECT_EQ(st_open_memory(bytes.data(), bytes.size(), nullptr, &f, nullptr),
            ST_ERR_HEADER_DESERIALIZATION);
  EXPECT_EQ(f, nullptr);
}

TEST(FormatValues, LongNameIsTruncatedInErrorRecord) {
  std::string name(300, 'n');
  std::string h = "{\"" + name + "\":" + entry("F32", "[2]", 0, 4) + "}";
  std::string bytes = make_file(h, "abcd");
  st_file *f = nullptr;
  st_error err;
  ASSERT_EQ(st_open_memory(bytes.data(), bytes.size(), nullptr, &f, &err), ST_ERR_INVALID_TENSOR_INFO);
  EXPECT_EQ(err.name_len, 300u);
  EXPECT_EQ(std::strlen(err.name), static_cast<size_t>(ST_ERROR_NAME_CAP - 1));
}

}  // namespace
