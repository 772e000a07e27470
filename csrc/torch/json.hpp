// json.hpp -- internal to the C++ adapter and its tests: a read-only C++ view
// of a text parsed by the project's one strict JSON reader
// (csrc/common/json.h). No parsing of its own.
#ifndef SAFETENSORS_TORCH_JSON_HPP
#define SAFETENSORS_TORCH_JSON_HPP

#include "common/json.h"

#include <cstdint>
#include <new>
#include <string>
#include <string_view>
#include <vector>

namespace safetensors::detail {

class Json {
 public:
  static constexpr size_t npos = SIZE_MAX;

  // Parses text (borrowed: it must outlive this object); ok() tells whether
  // it is strict JSON nesting at most max_depth levels. Out of memory throws
  // std::bad_alloc.
  Json(std::string_view text, uint32_t max_depth, uint32_t flags = 0) {
    st__json_parse(text.data(), text.size(), max_depth, flags, nullptr, &doc_, &err_);
    if (err_.code == ST__JSON_NOMEM) throw std::bad_alloc();
  }
  ~Json() { st__json_free(&doc_); }
  Json(const Json &) = delete;
  Json &operator=(const Json &) = delete;

  bool ok() const noexcept { return err_.code == ST__JSON_OK; }
  const st__json_error &error() const noexcept { return err_; }
  size_t count() const noexcept { return doc_.ntok; }

  uint32_t type(size_t k) const { return doc_.tok[k].type; }
  bool is_object(size_t k) const { return type(k) == ST__JSON_OBJECT; }
  bool is_array(size_t k) const { return type(k) == ST__JSON_ARRAY; }
  bool is_string(size_t k) const { return type(k) == ST__JSON_STRING; }
  // Members of an object, elements of an array.
  size_t size(size_t k) const { return doc_.tok[k].size; }

  // The text of token k (a string's raw body between its quotes).
  std::string_view raw(size_t k) const {
    size_t len;
    const unsigned char *p = st__json_raw(&doc_, k, &len);
    return {reinterpret_cast<const char *>(p), len};
  }
  // A string token, escapes decoded.
  std::string string(size_t k) const {
    std::string_view r = raw(k);
    std::string out(r.size() + 1, '\0');
    size_t written = 0;
    st__json_string(&doc_, k, reinterpret_cast<unsigned char *>(out.data()), out.size(),
                    &written, nullptr);
    out.resize(written);
    return out;
  }
  bool string_is(size_t k, std::string_view lit) const {
    return is_string(k) && st__json_string_is(&doc_, k, lit.data(), lit.size());
  }
  bool is_literal(size_t k, std::string_view lit) const {
    return type(k) == ST__JSON_PRIMITIVE && raw(k) == lit;
  }
  bool is_bool(size_t k) const { return is_literal(k, "true") || is_literal(k, "false"); }
  bool is_number(size_t k) const {
    return type(k) == ST__JSON_PRIMITIVE && !is_bool(k) && !st__json_is_null(&doc_, k);
  }
  // A number written without fraction or exponent (any magnitude).
  bool is_integer(size_t k) const {
    return is_number(k) && raw(k).find_first_of(".eE") == std::string_view::npos;
  }

  // Whether a number's magnitude is within DBL_MAX (the reader's own rule,
  // applied to this token alone).
  bool is_finite(size_t k) const {
    Json one(raw(k), 1, ST__JSON_FINITE_NUMBERS);
    return one.ok();
  }

  // The element tokens of an array; the key tokens of an object (each key's
  // value is the token after it).
  std::vector<size_t> children(size_t k) const {
    std::vector<size_t> out;
    out.reserve(size(k));
    for (size_t c = k + 1, i = 0; i < size(k); ++i) {
      out.push_back(c);
      c = doc_.tok[is_object(k) ? c + 1 : c].next;
    }
    return out;
  }
  // The value of the member called key of object obj, or npos.
  size_t find(size_t obj, std::string_view key) const {
    for (size_t c : children(obj))
      if (string_is(c, key)) return c + 1;
    return npos;
  }
  // Whether some object of the document has the same key twice.
  bool has_duplicate_key() const {
    for (size_t k = 0; k < count(); ++k) {
      if (!is_object(k)) continue;
      size_t dup = npos;
      if (st__json_find_duplicate(&doc_, k, &dup) != ST__JSON_OK) throw std::bad_alloc();
      if (dup != npos) return true;
    }
    return false;
  }

 private:
  st__json doc_{};
  st__json_error err_{};
};

}  // namespace safetensors::detail

#endif  // SAFETENSORS_TORCH_JSON_HPP
