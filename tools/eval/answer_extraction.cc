#include "tools/eval/answer_extraction.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "common/tokenizer/tokenizer.h"
#include "glog/logging.h"

namespace kvwire {
namespace eval {
namespace {

// Python's \s (str.isspace) is Unicode White_Space plus \x1c-\x1f.
constexpr char kSpaceClass[] = "[\\s\\x{1c}-\\x{1f}]";

// The reference's step-1 patterns in its order. re.IGNORECASE makes the
// case variants redundant; they are kept so the list reads like the source.
const char* const kAnswerPatterns[] = {
    // English
    "Answer:",
    "answer:",
    "ANSWER:",
    "Your answer:",
    "your answer:",
    "YOUR ANSWER:",
    "The answer is",
    "the answer is",
    "THE ANSWER IS",
    "Correct answer is",
    "correct answer is",
    "Correct answer is:",
    "correct answer is:",
    "Correct answer:",
    "correct answer:",
    "CORRECT ANSWER:",
    // Swahili
    "Jibu lako:",
    "jibu lako:",
    "JIBU LAKO:",
    "Jibu:",
    "jibu:",
    "JIBU:",
    "Jibu sahihi:",
    "jibu sahihi:",
    "JIBU SAHIHI:",
    // Other
    "Response:",
    "response:",
    "RESPONSE:",
    "Choice:",
    "choice:",
    "CHOICE:",
    "Option:",
    "option:",
    "OPTION:",
};

// Step 2, Python source in comments (\s becomes kSpaceClass).
const char* const kStandalonePatterns[] = {
    // r'\b([A-D])(?:\s*[.,!?:)]?\s*$)'
    "\\b([A-D])(?:\\s*[.,!?:)]?\\s*$)",
    // r'\b([A-D])(?:\s*[.,!?:)]\s)'
    "\\b([A-D])(?:\\s*[.,!?:)]\\s)",
    // r'(?:^|\s)([A-D])(?:\s*$)'
    "(?:^|\\s)([A-D])(?:\\s*$)",
};

const char* const kMathIndicators[] = {"+",    "-",   "*",   "/",  "=",
                                       "^",    "x^",  "y^",  "z^", "mod",
                                       "sqrt", "sin", "cos", "tan"};
const char* const kAnswerIndicators[] = {
    "jibu", "answer", "choice", "option", "response", "correct", "sahihi"};

struct CodeFree {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
using Code = std::unique_ptr<pcre2_code, CodeFree>;

Code Compile(const std::string& python_pattern) {
  const std::string pattern =
      absl::StrReplaceAll(python_pattern, {{"\\s", kSpaceClass}});
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(
      reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
      PCRE2_UTF | PCRE2_UCP | PCRE2_CASELESS, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    LOG(FATAL) << "answer extraction: cannot compile '" << pattern
               << "': " << reinterpret_cast<const char*>(message);
  }
  return Code(code);
}

struct Regexes {
  std::vector<Code> answer;
  std::vector<Code> standalone;
  Code any_letter;
};

const Regexes& GetRegexes() {
  static const Regexes* regexes = [] {
    auto* r = new Regexes();
    for (const char* p : kAnswerPatterns) {
      // Python: p + r'\s*(.*)' where . stops at '\n' only.
      r->answer.push_back(Compile(std::string(p) + "\\s*([^\\n]*)"));
    }
    for (const char* p : kStandalonePatterns) {
      r->standalone.push_back(Compile(p));
    }
    r->any_letter = Compile("\\b([A-D])\\b");
    return r;
  }();
  return *regexes;
}

struct MatchData {
  pcre2_match_data* data;
  MatchData() : data(pcre2_match_data_create(8, nullptr)) {}
  ~MatchData() { pcre2_match_data_free(data); }
};

// re.findall for a pattern with one group: every group-1 capture of the
// non-overlapping matches, left to right.
std::vector<std::string> FindAll(const pcre2_code* code,
                                 absl::string_view text) {
  std::vector<std::string> out;
  MatchData md;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  PCRE2_SIZE offset = 0;
  while (offset <= text.size()) {
    const int rc = pcre2_match(code, subject, text.size(), offset,
                               PCRE2_NO_UTF_CHECK, md.data, nullptr);
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.data);
    if (rc > 1 && ov[2] != PCRE2_UNSET) {
      out.emplace_back(text.substr(ov[2], ov[3] - ov[2]));
    }
    if (ov[1] > ov[0]) {
      offset = ov[1];
    } else {
      // Empty match: step over one code point.
      offset = ov[1] + 1;
      while (offset < text.size() &&
             (static_cast<unsigned char>(text[offset]) & 0xC0) == 0x80) {
        ++offset;
      }
    }
  }
  return out;
}

// re.search: group 1 of the first match, if any.
bool Search(const pcre2_code* code, absl::string_view text,
            std::string* group) {
  MatchData md;
  const int rc =
      pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(),
                  0, PCRE2_NO_UTF_CHECK, md.data, nullptr);
  if (rc < 0) return false;
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.data);
  const absl::string_view g = rc > 1 && ov[2] != PCRE2_UNSET
                                  ? text.substr(ov[2], ov[3] - ov[2])
                                  : absl::string_view();
  group->assign(g.data(), g.size());
  return true;
}

bool IsUpperAD(char c) { return c >= 'A' && c <= 'D'; }

std::string Upper(const std::string& s) { return absl::AsciiStrToUpper(s); }

// Decodes the code point starting at text[i] (valid UTF-8 assumed).
uint32_t CodePointAt(absl::string_view text, size_t i, size_t* len) {
  const auto b = static_cast<unsigned char>(text[i]);
  if (b < 0x80) {
    *len = 1;
    return b;
  }
  const int n = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
  uint32_t cp = b & (0x3F >> (n - 1));
  for (int k = 1; k < n && i + k < text.size(); ++k) {
    cp = (cp << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
  }
  *len = static_cast<size_t>(n);
  return cp;
}

bool IsPySpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) ||
         cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

}  // namespace

absl::string_view PyStrip(absl::string_view text) {
  size_t begin = 0;
  while (begin < text.size()) {
    size_t len = 0;
    if (!IsPySpace(CodePointAt(text, begin, &len))) break;
    begin += len;
  }
  size_t end = text.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin &&
           (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) {
      --start;
    }
    size_t len = 0;
    if (!IsPySpace(CodePointAt(text, start, &len))) break;
    end = start;
  }
  return text.substr(begin, end - begin);
}

Extraction ExtractAnswerDetailed(absl::string_view raw) {
  const Regexes& re = GetRegexes();
  const std::string repaired = Utf8Lossy(raw);
  const absl::string_view text = PyStrip(repaired);
  Extraction out;
  if (text.empty()) return out;

  // 1. Answer patterns: first upper-case A-D after the first match.
  std::string rest;
  for (const Code& code : re.answer) {
    if (!Search(code.get(), text, &rest)) continue;
    for (char c : rest) {
      if (IsUpperAD(c)) {
        out.letter = std::string(1, c);
        out.stage = 1;
        return out;
      }
    }
  }

  const std::string lower = absl::AsciiStrToLower(text);
  bool has_math = false;
  for (const char* m : kMathIndicators) has_math |= absl::StrContains(text, m);
  bool has_answer_words = false;
  for (const char* w : kAnswerIndicators) {
    has_answer_words |= absl::StrContains(lower, w);
  }
  const bool math_only = has_math && !has_answer_words;

  // 2. Standalone letters.
  for (const Code& code : re.standalone) {
    const std::vector<std::string> matches = FindAll(code.get(), text);
    if (matches.empty()) continue;
    if (math_only) continue;
    out.letter = Upper(matches.back());
    out.stage = 2;
    return out;
  }

  // 3. The last word-bounded letter.
  const std::vector<std::string> letters = FindAll(re.any_letter.get(), text);
  if (!letters.empty()) {
    if (math_only) return out;
    out.letter = Upper(letters.back());
    out.stage = 3;
    return out;
  }

  // 4. The last upper-case A-D anywhere.
  for (auto it = text.rbegin(); it != text.rend(); ++it) {
    if (IsUpperAD(*it)) {
      out.letter = std::string(1, *it);
      out.stage = 4;
      return out;
    }
  }
  return out;
}

}  // namespace eval
}  // namespace kvwire
