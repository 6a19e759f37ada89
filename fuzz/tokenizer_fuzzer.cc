// Fuzzes tokenizer loading (Tokenizer::FromJson): tokenizer.json (model,
// vocabulary, merges, added tokens, normalizer, pre-tokenizer regexes,
// post-processor, decoder) and tokenizer_config.json (special tokens, chat
// template). Input: tokenizer.json bytes, then optionally a NUL byte and
// tokenizer_config.json bytes. A tokenizer that loads encodes and decodes a
// few fixed texts, with offsets too (and, with a recognised chat template,
// renders a short conversation), as the engines do.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view input(reinterpret_cast<const char*>(data), size);
  absl::string_view tokenizer_json = input;
  absl::string_view config_json;
  const size_t nul = input.find('\0');
  if (nul != absl::string_view::npos) {
    tokenizer_json = input.substr(0, nul);
    config_json = input.substr(nul + 1);
  }
  auto tokenizer = kvwire::Tokenizer::FromJson(tokenizer_json, config_json);
  if (!tokenizer.ok()) return 0;
  const kvwire::Tokenizer& tok = **tokenizer;
  for (absl::string_view text : {"Hello, world! It's 2024.\n",
                                 "  <|im_start|>user\n\xe4\xbd\xa0\xe5\xa5\xbd",
                                 "\xff\xfe invalid \xc3 utf8"}) {
    for (bool special : {false, true}) {
      const std::vector<uint32_t> ids = tok.Encode(text, special);
      // Offsets come from the same pipeline: same ids, one span each,
      // inside the input.
      const kvwire::EncodingWithOffsets enc =
          tok.EncodeWithOffsets(text, special);
      if (enc.ids != ids || enc.offsets.size() != ids.size()) __builtin_trap();
      for (const kvwire::TokenOffsets& o : enc.offsets) {
        if (o.begin > o.end || o.end > text.size()) __builtin_trap();
      }
      (void)tok.Decode(ids, /*skip_special_tokens=*/false);
      kvwire::DecodeOptions options;
      options.skip_special_tokens = true;
      options.clean_up_tokenization_spaces = true;
      (void)tok.Decode(ids, options);
    }
  }
  const std::vector<uint32_t> ids = {
      0, 1, 255, tok.vocab_size() - 1, tok.vocab_size(), 0xffffffffu};
  (void)tok.Decode(ids);
  for (uint32_t id : ids) (void)tok.IdToToken(id);
  auto chat = kvwire::ChatTemplate::FromTokenizer(tok);
  if (chat.ok()) {
    std::vector<kvwire::ChatMessage> messages(2);
    messages[0].role = "system";
    messages[0].content = "Be brief.";
    messages[1].role = "user";
    messages[1].content = "2+2?";
    kvwire::ChatTemplateOptions options;
    options.add_generation_prompt = true;
    (void)chat->Apply(messages, options);
  }
  return 0;
}
