// Reads only what C++ needs from the structure record: the aliases. The rest
// of the record (containers, plain values, devices) rebuilds Python objects
// and has no C++ counterpart.
#include "record.hpp"

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace safetensors::detail {
namespace {

constexpr int kMaxDepth = 256;

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  std::string text;  // String: decoded; Number: as written
  std::vector<Json> items;         // Array elements; Object values
  std::vector<std::string> keys;   // Object keys, parallel to items

  const Json *get(std::string_view key) const {
    for (size_t i = 0; i < keys.size(); ++i)
      if (keys[i] == key) return &items[i];
    return nullptr;
  }
};

class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) {}

  bool parse(Json &out) {
    if (!value(out, 0)) return false;
    ws();
    return pos_ == s_.size();
  }

 private:
  void ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' ||
                                s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }
  bool lit(std::string_view w) {
    if (s_.substr(pos_, w.size()) != w) return false;
    pos_ += w.size();
    return true;
  }
  static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  bool u4(uint32_t &cp) {
    if (s_.size() - pos_ < 4) return false;
    cp = 0;
    for (int i = 0; i < 4; ++i) {
      int h = hex(s_[pos_++]);
      if (h < 0) return false;
      cp = cp * 16 + static_cast<uint32_t>(h);
    }
    return true;
  }
  static void utf8(std::string &out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  bool string(std::string &out) {
    if (pos_ >= s_.size() || s_[pos_] != '"') return false;
    ++pos_;
    while (pos_ < s_.size()) {
      char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) return false;
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp;
          if (!u4(cp)) return false;
          if (cp >= 0xD800 && cp < 0xDC00) {
            uint32_t lo;
            if (!lit("\\u") || !u4(lo) || lo < 0xDC00 || lo >= 0xE000) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            return false;
          }
          utf8(out, cp);
          break;
        }
        default: return false;
      }
    }
    return false;
  }
  bool value(Json &out, int depth) {
    if (depth > kMaxDepth) return false;
    ws();
    if (pos_ >= s_.size()) return false;
    char c = s_[pos_];
    if (c == '{') {
      out.kind = Json::Object;
      ++pos_;
      ws();
      if (pos_ < s_.size() && s_[pos_] == '}') { ++pos_; return true; }
      for (;;) {
        ws();
        std::string key;
        if (!string(key)) return false;
        ws();
        if (!lit(":")) return false;
        Json v;
        if (!value(v, depth + 1)) return false;
        out.keys.push_back(std::move(key));
        out.items.push_back(std::move(v));
        ws();
        if (lit(",")) continue;
        return lit("}");
      }
    }
    if (c == '[') {
      out.kind = Json::Array;
      ++pos_;
      ws();
      if (pos_ < s_.size() && s_[pos_] == ']') { ++pos_; return true; }
      for (;;) {
        Json v;
        if (!value(v, depth + 1)) return false;
        out.items.push_back(std::move(v));
        ws();
        if (lit(",")) continue;
        return lit("]");
      }
    }
    if (c == '"') {
      out.kind = Json::String;
      return string(out.text);
    }
    if (lit("true") || lit("false")) { out.kind = Json::Bool; return true; }
    if (lit("null")) { out.kind = Json::Null; return true; }
    size_t start = pos_;
    while (pos_ < s_.size() && (s_[pos_] == '-' || s_[pos_] == '+' || s_[pos_] == '.' ||
                                s_[pos_] == 'e' || s_[pos_] == 'E' ||
                                (s_[pos_] >= '0' && s_[pos_] <= '9')))
      ++pos_;
    if (pos_ == start) return false;
    out.kind = Json::Number;
    out.text = std::string(s_.substr(start, pos_ - start));
    return true;
  }

  std::string_view s_;
  size_t pos_ = 0;
};

struct Walker {
  bool (*is_stored)(const void *, const std::string &);
  const void *ctx;
  std::map<std::string, std::string> aliases;

  static std::string join(const std::string &prefix, const std::string &part) {
    return prefix.empty() ? part : prefix + "." + part;
  }

  // Depth is bounded by the parser's limit.
  void walk(const Json &n, const std::string &path, bool root) {
    if (n.kind != Json::Object) return;
    const Json *t = n.get("t");
    if (!t || t->kind != Json::String) return;
    if (t->text == "tensor") {
      const Json *name = n.get("name");
      if (!name || name->kind != Json::String) return;
      std::string natural = root ? std::string("tensor") : path;
      if (natural != name->text && is_stored(ctx, name->text) &&
          !is_stored(ctx, natural))
        aliases.emplace(std::move(natural), name->text);
      return;
    }
    const Json *items = n.get("items");
    if (!items || items->kind != Json::Array) return;
    if (t->text == "list" || t->text == "tuple") {
      for (size_t i = 0; i < items->items.size(); ++i)
        walk(items->items[i], join(path, std::to_string(i)), false);
    } else if (t->text == "dict" || t->text == "odict") {
      for (const Json &it : items->items) {
        if (it.kind != Json::Array || it.items.size() != 2) continue;
        const Json &key = it.items[0];
        if (key.kind != Json::String && key.kind != Json::Number) continue;
        walk(it.items[1], join(path, key.text), false);
      }
    }
  }
};

}  // namespace

std::map<std::string, std::string> record_aliases(
    std::string_view json, bool (*is_stored)(const void *, const std::string &),
    const void *ctx) {
  Json doc;
  if (!Parser(json).parse(doc)) return {};
  const Json *root = doc.get("root");
  if (!root) return {};
  Walker w{is_stored, ctx, {}};
  w.walk(*root, std::string(), true);
  return std::move(w.aliases);
}

}  // namespace safetensors::detail
