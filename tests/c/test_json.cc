// The strict JSON reader of csrc/common (common/json.h), which the header
// parser, the CLI's index reader and the C++ record parser share: verdicts and
// error positions per failure class, the token structure, string decoding,
// exact integers, duplicate keys, flags and allocation failures.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common/json.h"
#include "testutil.h"

namespace {

// Owns its text: the document borrows it.
struct Parsed {
  std::string text;
  st__json doc;
  st__json_error err;
  st__json_status st;
  Parsed(std::string t, uint32_t depth = 64, uint32_t flags = 0, const st_allocator *a = nullptr)
      : text(std::move(t)) {
    st = st__json_parse(text.data(), text.size(), depth, flags, a, &doc, &err);
  }
  ~Parsed() { st__json_free(&doc); }
};

TEST(Json, VerdictAndPositionPerFailureClass) {
  struct Case {
    const char *text;
    st__json_status want;
    size_t pos;
  };
  const Case cases[] = {
      {"{}", ST__JSON_OK, 0},
      {" \t\r\n[1, -0, 0.5e-3, true, false, null, \"s\"] ", ST__JSON_OK, 0},
      {"\"top\"", ST__JSON_OK, 0},
      {"", ST__JSON_SYNTAX, 0},
      {"   ", ST__JSON_SYNTAX, 3},
      {"{\"a\":1,}", ST__JSON_SYNTAX, 7},
      {"[1,]", ST__JSON_SYNTAX, 3},
      {"[1 2]", ST__JSON_SYNTAX, 3},
      {"{\"a\"::1}", ST__JSON_SYNTAX, 5},
      {"{\"a\" 1}", ST__JSON_SYNTAX, 5},
      {"{a:1}", ST__JSON_SYNTAX, 1},
      {"[01]", ST__JSON_SYNTAX, 2},
      {"[+1]", ST__JSON_SYNTAX, 1},
      {"[1.]", ST__JSON_SYNTAX, 3},
      {"[1e]", ST__JSON_SYNTAX, 3},
      {"[tru]", ST__JSON_SYNTAX, 4},
      {"[nul1]", ST__JSON_SYNTAX, 4},
      {"{} x", ST__JSON_SYNTAX, 3},
      {"{}{}", ST__JSON_SYNTAX, 2},
      {"[\"a\\q\"]", ST__JSON_SYNTAX, 3},
      {"[\"\\u12g4\"]", ST__JSON_SYNTAX, 2},
      {"[\"\\ud800\"]", ST__JSON_SYNTAX, 2},
      {"[\"\\udc00\"]", ST__JSON_SYNTAX, 2},
      {"[\"\\ud800\\u0041\"]", ST__JSON_SYNTAX, 2},
      {"[\"a\tb\"]", ST__JSON_SYNTAX, 3},
      {"[\"abc", ST__JSON_SYNTAX, 5},
      {"[1}", ST__JSON_SYNTAX, 2},
      {"{\"a\":1]", ST__JSON_SYNTAX, 6},
      {"[\"\xff\"]", ST__JSON_UTF8, 2},
      {"[\"\xc0\x80\"]", ST__JSON_UTF8, 2},
      {"[\"\xed\xa0\x80\"]", ST__JSON_UTF8, 2},
      {"[\"\xe2\x82", ST__JSON_UTF8, 2},
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(c.text);
    Parsed p(c.text);
    EXPECT_EQ(p.st, c.want);
    EXPECT_EQ(p.err.code, c.want);
    if (c.want != ST__JSON_OK) {
      EXPECT_EQ(p.err.pos, c.pos);
      EXPECT_NE(std::strlen(p.err.message), 0u);
      EXPECT_EQ(p.doc.tok, nullptr);
    }
  }
}

TEST(Json, FlagsRootObjectAndFiniteNumbers) {
  EXPECT_EQ(Parsed("[]", 64, ST__JSON_ROOT_OBJECT).st, ST__JSON_SYNTAX);
  EXPECT_EQ(Parsed("  {}", 64, ST__JSON_ROOT_OBJECT).st, ST__JSON_OK);
  const std::string huge = "[1e309]";
  EXPECT_EQ(Parsed(huge).st, ST__JSON_OK);
  Parsed p(huge, 64, ST__JSON_FINITE_NUMBERS);
  EXPECT_EQ(p.st, ST__JSON_SYNTAX);
  EXPECT_EQ(p.err.pos, 1u);
  EXPECT_EQ(Parsed("[1.7976931348623157e308, -1e308, 0e999999]", 64, ST__JSON_FINITE_NUMBERS).st,
            ST__JSON_OK);
  EXPECT_EQ(Parsed("[179769313486231580000e288]", 64, ST__JSON_FINITE_NUMBERS).st,
            ST__JSON_SYNTAX);
}

TEST(Json, DepthLimitWithoutRecursion) {
  EXPECT_EQ(Parsed("[[[]]]", 3).st, ST__JSON_OK);
  Parsed p("[[[[]]]]", 3);
  EXPECT_EQ(p.st, ST__JSON_DEPTH);
  EXPECT_EQ(p.err.pos, 3u);
  const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
  EXPECT_EQ(Parsed(deep, UINT32_MAX).st, ST__JSON_OK);
  EXPECT_EQ(Parsed(deep, 999999).st, ST__JSON_DEPTH);
}

TEST(Json, TokensSizesAndSubtreeEnds) {
  const std::string text = "{\"a\":[1,{\"b\":null}],\"c\":\"x\\ny\",\"d\":{}}";
  Parsed p(text);
  ASSERT_EQ(p.st, ST__JSON_OK);
  // { a [ 1 { b null } ] c "x\ny" d { }
  ASSERT_EQ(p.doc.ntok, 11u);
  const st__json_tok *t = p.doc.tok;
  EXPECT_EQ(t[0].type, ST__JSON_OBJECT);
  EXPECT_EQ(t[0].size, 3u);
  EXPECT_EQ(t[0].next, 11u);
  EXPECT_EQ(t[0].start, 0u);
  EXPECT_EQ(t[0].end, text.size());
  EXPECT_EQ(t[1].type, ST__JSON_STRING);  // key "a"
  EXPECT_EQ(t[1].size, 1u);
  EXPECT_EQ(t[1].next, 2u);
  EXPECT_EQ(st__json_pos(&p.doc, 1), 1u);
  EXPECT_EQ(t[2].type, ST__JSON_ARRAY);
  EXPECT_EQ(t[2].size, 2u);
  EXPECT_EQ(t[2].next, 7u);
  EXPECT_EQ(t[3].type, ST__JSON_PRIMITIVE);
  EXPECT_EQ(t[4].type, ST__JSON_OBJECT);
  EXPECT_EQ(t[4].size, 1u);
  EXPECT_EQ(t[4].next, 7u);
  EXPECT_TRUE(st__json_is_null(&p.doc, 6));
  EXPECT_TRUE(st__json_string_is(&p.doc, 7, "c", 1));
  unsigned char buf[16];
  size_t written = 0, nul = 0;
  EXPECT_EQ(st__json_string(&p.doc, 8, buf, sizeof buf, &written, &nul), 3u);
  EXPECT_EQ(std::string(reinterpret_cast<char *>(buf), written), "x\ny");
  EXPECT_EQ(nul, SIZE_MAX);
  EXPECT_EQ(t[10].type, ST__JSON_OBJECT);
  EXPECT_EQ(t[10].size, 0u);
  EXPECT_EQ(t[10].next, 11u);
}

TEST(Json, UnescapeDecodesTruncatesAndFindsNul) {
  struct Case {
    std::string raw;
    std::string want;
    size_t nul;
  };
  const Case cases[] = {
      {"plain", "plain", SIZE_MAX},
      {"\\\"\\\\\\/\\b\\f\\n\\r\\t", "\"\\/\b\f\n\r\t", SIZE_MAX},
      {"\\u00e9\\u65e5", "\xc3\xa9\xe6\x97\xa5", SIZE_MAX},
      {"\\ud83d\\ude42", "\xf0\x9f\x99\x82", SIZE_MAX},
      {"a\\u0000b", std::string("a\0b", 3), 1},
      {"\xc3\xa9", "\xc3\xa9", SIZE_MAX},
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(c.raw);
    std::vector<unsigned char> out(c.raw.size() + 1, 0xEE);
    size_t written = 0, nul = 0;
    const auto *raw = reinterpret_cast<const unsigned char *>(c.raw.data());
    EXPECT_EQ(st__json_unescape(raw, c.raw.size(), out.data(), out.size(), &written, &nul),
              c.want.size());
    EXPECT_EQ(std::string(reinterpret_cast<char *>(out.data()), written), c.want);
    EXPECT_EQ(out[written], 0u);
    EXPECT_EQ(nul, c.nul);
    EXPECT_TRUE(st__json_unescaped_is(raw, c.raw.size(), c.want.data(), c.want.size()));
  }
  // Truncation keeps whole escapes: "\u00e9" (2 bytes) does not fit in 2 after "a".
  const std::string raw = "a\\u00e9z";
  unsigned char out[2];
  size_t written = 0;
  EXPECT_EQ(st__json_unescape(reinterpret_cast<const unsigned char *>(raw.data()), raw.size(), out,
                              sizeof out, &written, nullptr),
            4u);
  EXPECT_EQ(written, 1u);
  EXPECT_EQ(out[0], 'a');
  EXPECT_EQ(out[1], 0u);
  const std::string meta = "__metad\\u0061ta__";
  EXPECT_TRUE(st__json_unescaped_is(reinterpret_cast<const unsigned char *>(meta.data()),
                                    meta.size(), "__metadata__", 12));
  EXPECT_FALSE(st__json_unescaped_is(reinterpret_cast<const unsigned char *>(meta.data()),
                                     meta.size(), "__metadata_", 11));
}

TEST(Json, ExactUnsignedIntegers) {
  Parsed p("[0, 18446744073709551615, 18446744073709551616, 01, -1, 1.0, 1e3, \"1\", true]");
  ASSERT_EQ(p.st, ST__JSON_SYNTAX);  // 01 is not JSON
  Parsed q("[0, 18446744073709551615, 18446744073709551616, -1, 1.0, 1e3, \"1\", true]");
  ASSERT_EQ(q.st, ST__JSON_OK);
  uint64_t v = 7;
  EXPECT_TRUE(st__json_u64(&q.doc, 1, &v));
  EXPECT_EQ(v, 0u);
  EXPECT_TRUE(st__json_u64(&q.doc, 2, &v));
  EXPECT_EQ(v, UINT64_MAX);
  for (size_t k = 3; k < q.doc.ntok; k++) EXPECT_FALSE(st__json_u64(&q.doc, k, &v)) << k;
}

TEST(Json, DuplicateKeysCompareDecoded) {
  struct Case {
    const char *text;
    size_t dup_pos;  // SIZE_MAX: none
  };
  const Case cases[] = {
      {"{}", SIZE_MAX},
      {"{\"a\":1}", SIZE_MAX},
      {"{\"a\":1,\"b\":2,\"ab\":3}", SIZE_MAX},
      {"{\"a\":1,\"a\":2}", 7},
      {"{\"a\":1,\"b\":2,\"\\u0061\":3}", 13},
      {"{\"x\":{\"a\":1},\"y\":{\"a\":1}}", SIZE_MAX},  // nested objects are their own
      {"{\"b\":1,\"a\":2,\"b\":3,\"a\":4}", 13},       // the earliest second occurrence
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(c.text);
    Parsed p(c.text);
    ASSERT_EQ(p.st, ST__JSON_OK);
    size_t dup = 0;
    ASSERT_EQ(st__json_find_duplicate(&p.doc, 0, &dup), ST__JSON_OK);
    if (c.dup_pos == SIZE_MAX) {
      EXPECT_EQ(dup, SIZE_MAX);
    } else {
      ASSERT_NE(dup, SIZE_MAX);
      EXPECT_EQ(st__json_pos(&p.doc, dup), c.dup_pos);
    }
  }
}

TEST(Json, EveryAllocationFailureIsClean) {
  const std::string text = "{\"a\":[1,2,{\"b\":\"c\"}],\"a\":0}";
  for (uint64_t k = 1;; k++) {
    sttest::FailingAllocator fa;
    fa.fail_at = k;
    st__json doc;
    st__json_error err;
    st__json_status st = st__json_parse(text.data(), text.size(), 1000, 0, &fa.alloc, &doc, &err);
    if (st == ST__JSON_OK) {
      size_t dup = 0;
      st__json_status d = st__json_find_duplicate(&doc, 0, &dup);
      st__json_free(&doc);
      EXPECT_EQ(fa.live, 0);
      if (d == ST__JSON_OK && fa.calls < k) break;  // nothing left to fail
      EXPECT_EQ(d, ST__JSON_NOMEM);
      continue;
    }
    EXPECT_EQ(st, ST__JSON_NOMEM) << k;
    EXPECT_EQ(err.code, ST__JSON_NOMEM);
    EXPECT_EQ(doc.tok, nullptr);
    EXPECT_EQ(fa.live, 0) << k;
    ASSERT_LT(k, 100u);
  }
}

std::string escaped(const std::string &s, uint32_t flags) {
  std::string out;
  st__json_escape(
      s.data(), s.size(), flags,
      [](void *ctx, const char *b, size_t n) { static_cast<std::string *>(ctx)->append(b, n); },
      &out);
  return out;
}

// The three escapings the project writes: serde_json's (the reference
// writer's header), Python's ensure_ascii (the structure record), and the
// CLI's --json output of names that may not be UTF-8.
TEST(Json, EscapeSerdeAsciiAndReplace) {
  const std::string mixed = std::string("a\"b\\c\b\f\n\r\t\x01\x1f\x7f") + "\xc3\xa9" +
                            "\xe2\x82\xac" + "\xf0\x9f\x98\x80";
  EXPECT_EQ(escaped(mixed, 0), std::string("\"a\\\"b\\\\c\\b\\f\\n\\r\\t\\u0001\\u001f\x7f") +
                                   "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
  // json.dumps(mixed, ensure_ascii=True) in Python 3.11.
  EXPECT_EQ(escaped(mixed, ST__JSON_ESCAPE_ASCII),
            "\"a\\\"b\\\\c\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\\u00e9\\u20ac\\ud83d\\ude00\"");
  EXPECT_EQ(escaped(mixed, ST__JSON_ESCAPE_REPLACE),
            escaped(mixed, 0));  // valid UTF-8: nothing to replace
  const std::string bad = std::string("x\xff") + "y\xc3";  // a stray byte, a cut sequence
  EXPECT_EQ(escaped(bad, 0), "\"" + bad + "\"");
  EXPECT_EQ(escaped(bad, ST__JSON_ESCAPE_ASCII), "\"" + bad + "\"");  // copied, for a writer to refuse
  EXPECT_EQ(escaped(bad, ST__JSON_ESCAPE_REPLACE), "\"x\\ufffdy\\ufffd\"");
  EXPECT_EQ(escaped(bad, ST__JSON_ESCAPE_REPLACE | ST__JSON_ESCAPE_ASCII), "\"x\\ufffdy\\ufffd\"");
  EXPECT_EQ(escaped("", 0), "\"\"");
  EXPECT_EQ(escaped(std::string(1, '\0'), ST__JSON_ESCAPE_ASCII), "\"\\u0000\"");
}

}  // namespace
