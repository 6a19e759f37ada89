#include "tests/common/tokenizer/tokenizer_fixtures.h"

namespace kvwire {

using json = nlohmann::json;

const char kQwenSplitPattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

std::string ByteLevelChar(unsigned b) {
  unsigned cp = b;
  if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) {
    unsigned n = 0;
    for (unsigned k = 0; k < b; ++k) {
      if (!((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || k >= 174)) ++n;
    }
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

std::string ByteLevelMapped(const std::string& raw) {
  std::string s;
  for (unsigned char c : raw) s += ByteLevelChar(c);
  return s;
}

json AddedTokenJson(uint32_t id, const std::string& content, bool special,
                    bool lstrip, bool rstrip, bool single_word,
                    bool normalized) {
  return {
      {"id", id},          {"content", content}, {"single_word", single_word},
      {"lstrip", lstrip},  {"rstrip", rstrip},   {"normalized", normalized},
      {"special", special}};
}

json ByteLevelJson(bool add_prefix_space, bool trim_offsets, bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", add_prefix_space},
          {"trim_offsets", trim_offsets},
          {"use_regex", use_regex}};
}

json BosTemplateProcessing(uint32_t id, const std::string& token) {
  return {{"type", "TemplateProcessing"},
          {"single",
           json::array({json{{"SpecialToken", {{"id", token}, {"type_id", 0}}}},
                        json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
          {"pair", json::array()},
          {"special_tokens",
           {{token,
             {{"id", token},
              {"ids", json::array({id})},
              {"tokens", json::array({token})}}}}}};
}

ByteLevelBpeBuilder::ByteLevelBpeBuilder()
    : pre_tokenizer{
          {"type", "Sequence"},
          {"pretokenizers",
           json::array({json{{"type", "Split"},
                             {"pattern", {{"Regex", kQwenSplitPattern}}},
                             {"behavior", "Isolated"},
                             {"invert", false}},
                        ByteLevelJson(/*add_prefix_space=*/false,
                                      /*trim_offsets=*/false,
                                      /*use_regex=*/false)})}} {}

json ByteLevelBpeBuilder::Build() {
  vocab = json::object();
  for (unsigned b = 0; b < 256; ++b) vocab[ByteLevelChar(b)] = b;
  next_id = 256;
  json merge_list = json::array();
  for (const auto& [a, b] : merges) {
    const std::string ma = ByteLevelMapped(a), mb = ByteLevelMapped(b);
    if (!vocab.contains(ma + mb)) vocab[ma + mb] = next_id++;
    if (array_merges) {
      merge_list.push_back(json::array({ma, mb}));
    } else {
      merge_list.push_back(ma + " " + mb);
    }
  }
  for (const std::string& t : extra_tokens) {
    if (!vocab.contains(ByteLevelMapped(t))) {
      vocab[ByteLevelMapped(t)] = next_id++;
    }
  }
  return json{{"version", "1.0"},
              {"added_tokens", added_tokens},
              {"normalizer", normalizer},
              {"pre_tokenizer", pre_tokenizer},
              {"post_processor", post_processor},
              {"decoder", decoder},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", ""},
                {"end_of_word_suffix", ""},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", ignore_merges},
                {"vocab", vocab},
                {"merges", merge_list}}}};
}

uint32_t ByteLevelBpeBuilder::NextId() {
  Build();
  return next_id;
}

void ByteLevelBpeBuilder::AddToken(uint32_t id, const std::string& content,
                                   bool special, bool lstrip, bool rstrip,
                                   bool single_word, bool normalized) {
  added_tokens.push_back(AddedTokenJson(id, content, special, lstrip, rstrip,
                                        single_word, normalized));
}

uint32_t ByteLevelBpeBuilder::Id(const std::string& raw) {
  return vocab[ByteLevelMapped(raw)];
}

}  // namespace kvwire
